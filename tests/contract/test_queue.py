"""The request queue end to end, as the cluster runs it: Redis as rendered (its exec probe), KEDA's trigger
read as KEDA reads it (the address, list and password the ScaledJob names, from a pod in another namespace),
and a runner Job pod as KEDA makes it (the MLflow image, its init container's pip install, piml's source from
the ConfigMap) that finds Redis and MLflow by their Service names and writes its predictions to MLflow.
piml submits through a port-forward, as `piml submit` does."""

from __future__ import annotations

from contextlib import contextmanager

import pytest

from piml.client import status, submit
from tests.contract.platform import start_platform

pytestmark = pytest.mark.contract


BROKER_PORT = {"redis": 6379, "rabbitmq": 5672}


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def queue_platform(request, pod_network, tmp_path_factory):
    kind = request.param
    platform = start_platform("pi5-3x8gb", {"queue": {"kind": kind}}, tmp_path_factory.mktemp(kind), pod_network)
    try:
        mlflow = platform.deployment("mlflow")
        broker = platform.deployment(kind)
        platform.kubelet.wait_probe(broker.container(), "readinessProbe", budget=120)
        platform.kubelet.wait_probe(mlflow.container(), "readinessProbe", budget=120)
        yield platform, mlflow, broker
    finally:
        platform.close()


@contextmanager
def mlflow_as_admin(platform, url: str):
    """MLflow's fluent API pointed at `url` with the admin's credentials, and everything put back after
    (other test packages use the same process-wide settings)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with pytest.MonkeyPatch.context() as env, _use_tracking_uri(url):
        env.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        env.setenv("MLFLOW_TRACKING_PASSWORD", platform.secret("mlflow", "admin-password"))
        yield


def _model_and_dataset(platform, mlflow_url, tmp_path):
    """Register a scikit-learn model and log a CSV through a port-forward to MLflow, as a user's notebook would."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    with mlflow_as_admin(platform, mlflow_url):
        iris = load_iris(as_frame=True)
        X = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
        model = LogisticRegression(max_iter=300).fit(X, iris.target)
        mlflow.set_experiment("contract")
        data = tmp_path / "iris.csv"
        X.to_csv(data, index=False)
        with mlflow.start_run() as run:
            info = mlflow.sklearn.log_model(
                model,
                name="model",
                signature=infer_signature(X, model.predict(X)),
                registered_model_name="contract-iris",
                pip_requirements=["scikit-learn"],
            )
            mlflow.log_artifact(str(data), "data")
        return info.registered_model_version, f"runs:/{run.info.run_id}/data/iris.csv", model, X, pd


def keda_sees(platform, scaled: dict) -> int:
    """The queue length KEDA's trigger reads: its own connection, from the ScaledJob's metadata and the env of
    the scaled container (the *FromEnv keys), to the broker by the name the trigger gives."""
    trigger = scaled["spec"]["triggers"][0]
    meta = trigger["metadata"]
    runner = platform.job_pod_preview("piml-runner")
    if trigger["type"] == "redis":
        import redis

        host, port = meta["address"].rsplit(":", 1)
        client = redis.Redis(
            platform.kubelet.resolve(host, "keda"),
            int(port),
            password=runner.env[meta["passwordFromEnv"]],
            socket_timeout=5,
        )
        return client.llen(meta["listName"])
    from urllib.parse import urlsplit

    import pika

    url = urlsplit(runner.env[meta["hostFromEnv"]])
    params = pika.URLParameters(
        url._replace(netloc=url.netloc.replace(url.hostname, platform.kubelet.resolve(url.hostname, "keda"))).geturl()
    )
    connection = pika.BlockingConnection(params)
    try:
        return connection.channel().queue_declare(meta["queueName"], passive=True).method.message_count
    finally:
        connection.close()


def test_a_request_becomes_predictions_through_the_rendered_runner(queue_platform, tmp_path):
    platform, mlflow_pod, broker_pod = queue_platform
    kind = platform.cluster.config.queue.kind
    mlflow_url = f"{platform.forward(mlflow_pod, 5000).url}/mlflow"
    version, dataset, model, X, pd = _model_and_dataset(platform, mlflow_url, tmp_path)
    password = platform.secret(kind, "password")
    forward = platform.forward(broker_pod, BROKER_PORT[kind])
    queue_url = (
        f"redis://:{password}@127.0.0.1:{forward.port}/0"
        if kind == "redis"
        else f"amqp://piml:{password}@127.0.0.1:{forward.port}/"
    )
    request_id = submit(f"models:/contract-iris/{version}", dataset, queue_url=queue_url)
    scaled = platform.kubelet.find("ScaledJob", "piml-runner", platform.ns)
    assert keda_sees(platform, scaled) == 1

    runner = platform.job_pod("piml-runner", "piml-runner-x7k2p")
    container = runner.container("runner")
    assert container.proc.wait(timeout=300) == 0, container.tail()
    state = status(request_id, queue_url=queue_url)
    assert state["state"] == "succeeded", state

    import mlflow

    with mlflow_as_admin(platform, mlflow_url):
        local = mlflow.artifacts.download_artifacts(
            run_id=state["run_id"], artifact_path="predictions.csv", dst_path=str(tmp_path)
        )
    predicted = pd.read_csv(local)
    assert list(predicted.iloc[:, -1]) == list(model.predict(X)), "the predictions are not the model's"
    assert runner.init_results == [("extra-packages", 0)]
