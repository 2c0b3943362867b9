"""Queue runner throughput on a 100k-row dataset, as a ratio of calling the model's predict directly.

Both sides run in this process on the same rows with the same registered scikit-learn model (a random
forest, so prediction is real work):
    direct:  model.predict(frame)  -- the pyfunc model already loaded, the frame already in memory
    runner:  Runner.run(request)   -- what a runner pod does per request: new MLflow run, load the model
             from the registry, read the file in batches, predict each batch, write the predictions file,
             log it as an artifact, log params and metrics
MLflow is a local SQLite store here (no server), so network time is not counted; the broker is not involved
(taking a request is one BLMOVE). Goal: runner / direct <= 1.3 for Parquet input. Reports CSV too.

    python benchmarks/runner_throughput.py [--rows 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
GOAL = 1.3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="piml-bench-"))
    os.chdir(workdir)  # MLflow's SQLite store puts artifacts in ./mlruns
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir}/mlflow.db"
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.ensemble import RandomForestClassifier

    from piml.queue import make_request
    from piml.runner import Runner

    rng = np.random.default_rng(0)
    columns = [f"f{i}" for i in range(20)]
    train = pd.DataFrame(rng.normal(size=(5000, 20)), columns=columns)
    labels = (train["f0"] + train["f1"] * train["f2"] > 0).astype(int)
    model = RandomForestClassifier(n_estimators=100, max_depth=12, n_jobs=1, random_state=0).fit(train, labels)
    mlflow.set_experiment("bench")
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(train, model.predict(train)),
            registered_model_name="bench-forest",
            pip_requirements=["scikit-learn"],
            skops_trusted_types=["sklearn.tree._tree.Tree"],
        )
    uri = "models:/bench-forest/1"
    data = pd.DataFrame(rng.normal(size=(args.rows, 20)), columns=columns)
    files = {"parquet": workdir / "data.parquet", "csv": workdir / "data.csv"}
    data.to_parquet(files["parquet"])
    data.to_csv(files["csv"], index=False)

    pyfunc = mlflow.pyfunc.load_model(uri)
    pyfunc.predict(data.head(10))  # warm up

    class Quiet:
        lease_seconds = 30

    # Interleaved, so that load from other processes on the machine hits both sides alike; the median ratio.
    ratios: dict[str, list[float]] = {fmt: [] for fmt in files}
    for _ in range(args.repeat):
        direct = _timed(lambda: pyfunc.predict(data))
        for fmt, path in files.items():
            runner = Runner(Quiet(), log=lambda line: None)  # fresh: loads the model from the registry each time
            request = make_request(
                uri, str(path), output="predictions.parquet" if fmt == "parquet" else "predictions.csv"
            )
            took = _timed(lambda runner=runner, request=request: runner.run(request))
            ratios[fmt].append(took / direct)
            print(f"direct {direct:.3f} s, runner ({fmt}) {took:.3f} s: ratio {took / direct:.2f}")
    for fmt in files:
        print(f"median ratio runner / direct predict, {fmt} input: {statistics.median(ratios[fmt]):.2f}")
    print(
        f"ratio runner / direct predict (parquet, {args.rows} rows): {statistics.median(ratios['parquet']):.2f} (goal <= {GOAL})"
    )


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
