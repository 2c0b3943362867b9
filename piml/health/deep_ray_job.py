"""The Ray job of `piml check --deep`. It runs on the Ray cluster, not here: piml sends this file's source as
the job's entrypoint (`python -c SOURCE MODEL EXPERIMENT`), so it needs only what a Ray image has, plus
mlflow, scikit-learn and pandas (the check's runtime_env pip adds them where the image lacks them).

A Ray task (one CPU, so on a worker: the autoscaler starts one if none runs) trains a LogisticRegression on
iris; the driver logs the training data as a CSV artifact (data/iris.csv) and the model to MLflow, registers
the model, and prints one line `PIML_CHECK_RESULT {json}` that the check reads from the job's logs (with the
rows and the model's own predictions on them, which the serving step compares with what the route answers).

MLflow's address and credentials come from the pods' environment (MLFLOW_TRACKING_URI,
MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD), never from the submission: Ray shows submissions on its
dashboard. Nothing here prints them.
"""

import inspect
import json
import os
import socket
import sys
import tempfile

MARK = "PIML_CHECK_RESULT "
DATASET = "data/iris.csv"


def train():
    """On a Ray worker: the model, its training data, its accuracy and where it ran (the pod's name)."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris(as_frame=True)
    features = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    model = LogisticRegression(max_iter=500).fit(features, iris.target)
    return model, features, float(model.score(features, iris.target)), socket.gethostname()


def main(model_name, experiment):
    missing = [
        name
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
        if not os.environ.get(name)
    ]
    if missing:
        print("piml-check: not set in the Ray pods' environment: " + ", ".join(missing), file=sys.stderr, flush=True)
        return 3

    import ray

    ray.init()  # inside a Ray job: joins its cluster
    model, features, accuracy, node = ray.get(ray.remote(num_cpus=1)(train).remote())
    print(f"piml-check: trained on {node}, accuracy {accuracy:.3f}", flush=True)

    import mlflow
    import sklearn
    from mlflow.models import infer_signature

    mlflow.set_experiment(experiment)
    # few calls: with basic auth each costs the server a password hash
    tags = {
        "piml.check": "deep",
        "piml.ray_node": node,
        "piml.estimator": "LogisticRegression(max_iter=500)",
        "piml.dataset": "iris",
    }
    with mlflow.start_run(run_name="piml-check", tags=tags) as run:
        mlflow.log_metric("accuracy", accuracy)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, os.path.basename(DATASET))
            features.to_csv(path, index=False)
            mlflow.log_artifact(path, artifact_path=os.path.dirname(DATASET))
        options = {
            "signature": infer_signature(features, model.predict(features)),
            "registered_model_name": model_name,
            "pip_requirements": [f"scikit-learn=={sklearn.__version__}"],
        }
        # mlflow 3 names a logged model `name`; mlflow 2 took `artifact_path`
        where = "name" if "name" in inspect.signature(mlflow.sklearn.log_model).parameters else "artifact_path"
        info = mlflow.sklearn.log_model(model, **{where: "model"}, **options)
    result = {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "model": model_name,
        "version": str(info.registered_model_version),
        "dataset": DATASET,
        "rows": len(features),
        "accuracy": accuracy,
        "node": node,
        # what the serving step posts, and what the model itself answers on them
        "columns": list(features.columns),
        "data": features.values.tolist(),
        "predictions": model.predict(features).tolist(),
    }
    print(MARK + json.dumps(result, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*(sys.argv[1:3] if len(sys.argv) >= 3 else ("piml-check", "piml-check"))))
