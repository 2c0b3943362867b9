"""Online serving: /predict requests per second and p50/p99 latency through piml's Ray Serve application, at 1
and 2 replicas, against MLflow's own `mlflow models serve` on the same registered model, in one run.

Both serve the same small scikit-learn model (a LogisticRegression on iris) from the same MLflow registry (a
local SQLite store), to the same closed-loop load: CONCURRENCY clients, each sending one row of JSON
(`dataframe_split`) and waiting for the answer, for SECONDS, keep-alive connections. The sides run interleaved,
ROUNDS times, and the medians are compared. Ray Serve runs piml's rendered serveConfigV2 (piml.serve.apps) on a
local Ray head with the shipped code on PYTHONPATH, as the cluster's pods have it; `mlflow models serve` runs
with one worker and `--env-manager local`. A third side, `serve-floor`, is a Serve deployment that does nothing
(reads the body, answers a constant) behind the same proxy: the most Ray Serve allows on this machine, so the
ratios say how much of the gap is piml's route and how much is Ray Serve's proxy hop.
Goals (#12): Ray Serve at 1 replica >= MLflow's throughput; its p99 <= 1.5x MLflow's.

    python benchmarks/serve_throughput.py [--seconds 10] [--concurrency 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bound import bound  # noqa: E402

THROUGHPUT_GOAL = 1.0
P99_GOAL = 1.5
MODEL = "bench-iris"
FLOOR_APP = """
from ray import serve
from starlette.responses import JSONResponse


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 0})
class Nothing:
    async def __call__(self, request):
        await request.body()
        return JSONResponse({"predictions": [0]})


app = Nothing.bind()
"""
FLOOR = {"name": "floor", "route_prefix": "/floor", "import_path": "bench_floor:app"}
TOKEN = os.urandom(16).hex()  # piml's routes need the serving token; both sides get the same header
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}


def load(port: int, path: str, body: bytes, seconds: float, concurrency: int) -> dict:
    """Closed-loop load: every client sends, waits, sends again, for `seconds`. Requests per second, latencies."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                conn.request("POST", path, body, HEADERS)
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                ok = False
            if ok:
                mine.append(time.perf_counter() - start)
            else:
                with lock:
                    failures[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {"rps": len(latencies) / seconds, "p50": pick(0.50), "p99": pick(0.99), "failed": failures[0]}


def wait_http(url: str, seconds: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"{url}: the server exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=HEADERS), timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url}: no answer within {seconds:.0f} s")


def register(workdir: Path) -> tuple[dict, bytes]:
    """The model registered in a local SQLite registry; the MLflow env for every process; one row as JSON."""
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}
    os.environ.update(env)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=500).fit(X, y)
    mlflow.set_experiment("bench")
    with mlflow.start_run():
        mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(X, model.predict(X)),
            registered_model_name=MODEL,
            pip_requirements=["scikit-learn"],
        )
    row = X.head(1)
    return env, json.dumps({"dataframe_split": row.to_dict(orient="split")}).encode()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bound(int(900 + args.rounds * 3 * (args.seconds + 30)))

    from piml.config import PimlConfig
    from piml.serve import apps
    from tests.ports import free_port
    from tests.raytools import VENV_BIN, ray_head_running
    from tests.serve.conftest import ServeHead, own_haproxy

    workdir = Path(tempfile.mkdtemp(prefix="piml-bench-serve-"))
    os.chdir(workdir)
    env, body = register(workdir)

    code = workdir / "app"
    for f in apps.code():
        (code / "piml" / f.path).parent.mkdir(parents=True, exist_ok=True)
        (code / "piml" / f.path).write_text(f.text)
    (code / "bench_floor.py").write_text(FLOOR_APP)

    mlflow_port = free_port()
    mlflow_proc = subprocess.Popen(
        [os.path.join(VENV_BIN, "mlflow"), "models", "serve", "-m", f"models:/{MODEL}/1", "--env-manager", "local"]
        + ["--host", "127.0.0.1", "-p", str(mlflow_port), "-w", "1"],
        # mlflow execs `uvicorn` by name: the virtualenv's, also when the benchmark's PATH lacks it
        env={**os.environ, **env, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    results: dict[str, list[dict]] = {"mlflow": [], "serve-1": [], "serve-2": [], "serve-floor": []}
    try:
        wait_http(f"http://127.0.0.1:{mlflow_port}/health", 120, mlflow_proc)
        ray_env = {**apps.POD_ENV, "PYTHONPATH": str(code), "PIML_SERVE_TOKEN": TOKEN}  # as the pods have it
        with (
            own_haproxy() as haproxy,
            ray_head_running(env, num_cpus=2, extra_env={**ray_env, **haproxy}, resources={apps.SLOT: 2}) as ray,
        ):
            serve_port = free_port()
            head = ServeHead(ray.dashboard_url, f"http://127.0.0.1:{serve_port}", ray.env, ray.log, ray.temp)

            def deploy(replicas: int) -> None:
                route = {"model": f"models:/{MODEL}/1", "min_replicas": replicas, "max_replicas": replicas}
                config = PimlConfig.model_validate({"serve": {"enabled": True, "pip": [], "routes": {"iris": route}}})
                rendered = apps.serve_config(config)
                rendered["applications"].append(FLOOR)
                head.deploy({**rendered, "http_options": {"host": "127.0.0.1", "port": serve_port}}, timeout=300)
                wait_http(f"http://127.0.0.1:{serve_port}/serve/iris/", 60)

            for _ in range(args.rounds):
                results["mlflow"].append(load(mlflow_port, "/invocations", body, args.seconds, args.concurrency))
                for replicas in (1, 2):
                    deploy(replicas)
                    load(serve_port, "/serve/iris/predict", body, 2, args.concurrency)  # warm up
                    sample = load(serve_port, "/serve/iris/predict", body, args.seconds, args.concurrency)
                    results[f"serve-{replicas}"].append(sample)
                    if replicas == 1:
                        load(serve_port, "/floor", body, 2, args.concurrency)  # warm up
                        results["serve-floor"].append(load(serve_port, "/floor", body, args.seconds, args.concurrency))
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited already (the error above says why)
            os.killpg(mlflow_proc.pid, signal.SIGTERM)
        mlflow_proc.wait(30)

    median = {
        side: {k: statistics.median(s[k] for s in samples) for k in ("rps", "p50", "p99")}
        for side, samples in results.items()
    }
    failed = {side: sum(s["failed"] for s in samples) for side, samples in results.items()}
    print(f"{args.concurrency} clients, {args.seconds:.0f} s each, median of {args.rounds} interleaved rounds:")
    for side, m in median.items():
        print(
            f"  {side:11} {m['rps']:7.1f} req/s  p50 {m['p50']:6.1f} ms  p99 {m['p99']:6.1f} ms  failed {failed[side]}"
        )
    base = median["mlflow"]
    ok = True
    for side in ("serve-1", "serve-2", "serve-floor"):
        rps, p99 = median[side]["rps"] / base["rps"], median[side]["p99"] / base["p99"]
        print(f"  {side} / mlflow: throughput {rps:.2f}x, p99 {p99:.2f}x")
    floor = median["serve-floor"]
    print(
        f"  serve-1 / serve-floor: throughput {median['serve-1']['rps'] / floor['rps']:.2f}x (piml's route vs no work)"
    )
    one = median["serve-1"]
    ok = (
        one["rps"] / base["rps"] >= THROUGHPUT_GOAL
        and one["p99"] / base["p99"] <= P99_GOAL
        and not any(failed.values())
    )
    print(
        f"goal (serve-1 vs mlflow): throughput >= {THROUGHPUT_GOAL}x, p99 <= {P99_GOAL}x, nothing failed: "
        + ("met" if ok else "NOT met")
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
