"""A real Ray head with Ray Serve (`ray start --head`, token authentication on, as the platform runs Ray) whose
processes carry MLflow's address and credentials in their environment, as the cluster's Ray pods do; piml's
Serve application is deployed to it with `serve deploy`, the way KubeRay hands a RayService's serveConfigV2 to
the head's dashboard."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.platform.conftest import plane  # noqa: F401 - the real control plane (test_app's port-forwards)
from tests.ports import free_port
from tests.queue.helpers import wait_for
from tests.raytools import VENV_BIN, ray_head_running
from tests.services import log_and_register

SERVE_TOKEN = secrets.token_hex(16)
MODEL = "piml-serve-iris"


@dataclass
class ServedModel:
    """A model registered for these tests alone (the session's registered_model keeps its alias): version 1 a
    LogisticRegression with alias `champion`; `register` adds versions."""

    features: list
    versions: dict  # version -> the fitted estimator

    def register(self, estimator, trusted: tuple[str, ...] = ()) -> str:
        """Fit and register `estimator` (`trusted`: see log_and_register); its version."""
        X, y = iris()
        version = log_and_register(estimator.fit(X, y), X, MODEL, trusted)
        self.versions[version] = estimator
        return version

    def alias(self, version: str) -> None:
        import mlflow

        mlflow.MlflowClient().set_registered_model_alias(MODEL, "champion", version)


def iris():
    from sklearn.datasets import load_iris

    data = load_iris(as_frame=True)
    return data.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_")), data.target


@pytest.fixture(scope="module")
def served_model(mlflow_server) -> ServedModel:
    import mlflow
    from sklearn.linear_model import LogisticRegression

    mlflow.set_experiment("piml-serve-tests")
    model = ServedModel(list(iris()[0].columns), {})
    model.alias(model.register(LogisticRegression(max_iter=500)))
    return model


@dataclass
class ServeHead:
    dashboard_url: str
    serve_url: str  # the Serve HTTP proxy
    env: dict
    log: Path
    temp: Path

    def deploy(self, config: dict, timeout: float = 180) -> None:
        """`serve deploy` the config, then wait (bounded) until every application in it is RUNNING."""
        path = self.temp / "serve.yaml"
        path.write_text(yaml.safe_dump(config))
        serve = os.path.join(VENV_BIN, "serve")
        done = subprocess.run(
            [serve, "deploy", str(path), "--address", self.dashboard_url],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        names = [app["name"] for app in config["applications"]]
        wait_for(lambda: all(self.status().get(n) == "RUNNING" for n in names), timeout, "serve applications")

    def replica_log(self, lines: int = 60) -> str:
        """The end of the Serve replicas' logs, for a failing assertion to show what the replica said."""
        logs = sorted((self.temp / "session_latest" / "logs" / "serve").glob("replica_*.log"))
        return "\n".join("\n".join(p.read_text(errors="replace").splitlines()[-lines:]) for p in logs)

    def status(self) -> dict[str, str]:
        request = urllib.request.Request(
            f"{self.dashboard_url}/api/serve/applications/",
            headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            apps = json.load(response).get("applications", {})
        failed = {n: a.get("message", "") for n, a in apps.items() if a.get("status") == "DEPLOY_FAILED"}
        assert not failed, f"serve applications failed to deploy: {failed}"
        return {name: app.get("status") for name, app in apps.items()}


@contextlib.contextmanager
def own_haproxy() -> Iterator[dict[str, str]]:
    """Ray Serve's HAProxy (apps.POD_ENV) keeps its files in /tmp/haproxy-serve and its stats and metrics on ports
    8404 and 9101: one pod each on the cluster, but two Ray heads on this machine would share them. The env that
    gives a head's HAProxy a directory and ports of its own. The directory's path is short: Ray adds a 56-character
    directory to it, and HAProxy refuses a socket path longer than 97 bytes."""
    directory = Path(tempfile.mkdtemp(prefix="ha-", dir="/tmp"))
    files = {"CONFIG_FILE_LOC": "haproxy.cfg", "SOCKET_PATH": "admin.sock", "SERVER_STATE_FILE": "server-state"}
    env = {f"RAY_SERVE_HAPROXY_{name}": str(directory / file) for name, file in files.items()}
    env["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"] = str(directory / "metrics.sock")
    env["RAY_SERVE_HAPROXY_SERVER_STATE_BASE"] = str(directory)
    env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port())
    env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
    try:
        yield env
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def serve_head(mlflow_server, tmp_path_factory):
    """A Ray head that is a serving pod: PYTHONPATH holds exactly the files piml ships in its ConfigMap (a module
    it forgets fails here as on the cluster), the pods' Ray settings (apps.POD_ENV), and four replica slots, as four
    serving worker pods offer."""
    from piml.serve import apps

    app_dir = tmp_path_factory.mktemp("serve-code")
    for f in apps.code():
        target = app_dir / "piml" / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(f.text)
    env = {**apps.POD_ENV, "PIML_SERVE_TOKEN": SERVE_TOKEN, "PYTHONPATH": str(app_dir)}  # as the pods have it
    with (
        own_haproxy() as haproxy,
        ray_head_running(mlflow_server.env, num_cpus=2, extra_env={**env, **haproxy}, resources={apps.SLOT: 4}) as head,
    ):
        yield ServeHead(head.dashboard_url, f"http://127.0.0.1:{free_port()}", head.env, head.log, head.temp)
