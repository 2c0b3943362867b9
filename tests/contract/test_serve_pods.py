"""Online serving as KubeRay runs it: the RayService piml renders, its head and a serving worker turned into Pods by
KubeRay's own pod builders, each run from the Ray image mirror with the operator's command, args, env, volumes and
probes, in pods of their own (network namespaces: each its own address and ports). The Serve config goes to the
head's dashboard as the operator sends it (PUT /api/serve/applications/ with the Ray token); the replica loads the
model from the MLflow pod by its Service name, with the credentials from MLflow's Secret.

What this holds that the local Ray head of tests/serve cannot: the replica runs in the worker's pod (the only one
with a serving slot), and HAProxy (apps.POD_ENV) on the head's serve port, where KubeRay's serve Service and the
ingress send requests, reaches it at the worker's address; KubeRay's probes of the serve port pass on both pods.

The replica needs mlflow-skinny, scikit-learn, skops and pandas. piml's default installs them from PyPI in the
replica's runtime_env, which a pod here cannot reach; so this runs as README says for a Ray image that has them:
`serve.pip: []`, with the Ray mirror carrying those packages (said in the output)."""

from __future__ import annotations

import importlib.metadata
import json
import time

import pytest
import yaml

from piml.render.images import model_pip
from piml.serve import apps
from tests.contract.kubelet import http_get
from tests.contract.platform import start_platform
from tests.serve.conftest import iris
from tests.services import log_and_register

pytestmark = pytest.mark.contract

MODEL = "contract-iris"
SETTINGS = {
    "serve": {
        "enabled": True,
        "pip": [],
        "routes": {"iris": {"model": f"models:/{MODEL}/1", "min_replicas": 1, "max_replicas": 1}},
    }
}


def test_a_route_answers_on_the_heads_serve_port_from_a_replica_in_the_worker_pod(pod_network, tmp_path, monkeypatch):
    import mlflow
    from sklearn.linear_model import LogisticRegression

    mlflow_version = importlib.metadata.version("mlflow")  # the server mirror's (images.mlflow picks the same)
    platform = start_platform("pi5-3x8gb", SETTINGS, tmp_path, pod_network, ray_extra=tuple(model_pip(mlflow_version)))
    try:
        mlflow_pod = platform.deployment("mlflow")
        platform.kubelet.wait_probe(mlflow_pod.container(), "readinessProbe", budget=120)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"{platform.forward(mlflow_pod, 5000).url}/mlflow")
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", platform.secret("mlflow", "admin-password"))
        # an experiment of this MLflow's own: the client keeps the active one process-wide, and an earlier test's
        # id does not exist in this new server (RESOURCE_DOES_NOT_EXIST)
        mlflow.set_experiment("piml-contract-serve")
        X, y = iris()
        model = LogisticRegression(max_iter=500).fit(X, y)
        assert log_and_register(model, X, MODEL) == "1"

        head, (worker,) = platform.ray_cluster(kind="RayService", name=apps.NAME)
        platform.kubelet.wait_probe(head.container("ray-head"), "readinessProbe", budget=180)
        rayservice = platform.kubelet.find("RayService", apps.NAME, platform.ns)
        config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
        platform.ray_dashboard(head, "PUT", "/api/serve/applications/", config)

        deadline, apps_status, details = time.monotonic() + 300, {}, {}
        while time.monotonic() < deadline:
            details = platform.ray_dashboard(head, path="/api/serve/applications/").get("applications", {})
            apps_status = {n: a.get("status") for n, a in details.items()}
            if apps_status.get("iris") == "RUNNING" or "DEPLOY_FAILED" in apps_status.values():
                break
            time.sleep(3)
        assert apps_status.get("iris") == "RUNNING", (
            apps_status,
            json.dumps(details)[-2000:],
            worker.container().tail(),
        )
        replicas = [r.get("node_ip") for d in details["iris"]["deployments"].values() for r in d.get("replicas", [])]
        assert replicas == [worker.ip], replicas  # the worker's slot, not the head (num-cpus 0, no slot)
        for pod in (head, worker):  # HAProxy runs in each pod (its Prometheus frontend is on 9101)
            ok, answer = http_get(pod.ip, 9101, "/metrics", {}, timeout=5, limit=20000)
            assert ok and "haproxy_" in answer, (pod.name, answer[:300])

        # KubeRay's probes of the serve port: the worker's readiness probe (wget .../-/healthz | grep success) and
        # the head's serve label (GET <head IP>:8000/-/healthz)
        platform.kubelet.wait_probe(worker.container(), "readinessProbe", budget=120)
        ok, answer = http_get(head.ip, apps.SERVE_PORT, "/-/healthz", {}, timeout=2)
        assert ok and "success" in answer, answer

        rows = X.iloc[::15].reset_index(drop=True)
        body = json.dumps({"dataframe_split": rows.to_dict(orient="split")}).encode()
        token = platform.secret(apps.NAME, "token")
        # the serve Service selects both pods, and piml's port-forward goes to the head's serve port: each way
        # reaches the replica through that pod's HAProxy
        forward = platform.forward(head, apps.SERVE_PORT)
        ways = {"head": (head.ip, apps.SERVE_PORT), "worker": (worker.ip, apps.SERVE_PORT)}
        ways["port-forward"] = ("127.0.0.1", forward.port)
        for way, (host, port) in ways.items():
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
            ok, answer = http_get(host, port, "/serve/iris/predict", headers, 30, method="POST", body=body, limit=5000)
            assert ok, (way, answer)
            result = json.loads(answer.split(" ", 1)[1])
            assert result["predictions"] == model.predict(rows).tolist() and result["version"] == "1", (way, result)
            ok, answer = http_get(host, port, "/serve/iris/predict", {}, 30, method="POST", body=body)
            assert not ok and answer.startswith("401 "), (way, answer)
    finally:
        platform.close()
