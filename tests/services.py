"""Real services on loopback, shared by the test packages (tests/queue, tests/health): redis-server,
`mlflow server --app-name basic-auth` (with a registered scikit-learn model), RabbitMQ.

Loaded as a plugin by tests/conftest.py. Each starts once per session, on demand, on free ports in temp dirs,
with passwords (recorded in tests.queue.helpers.SECRETS, so tests can check that nothing piml prints holds
them), and is always torn down. Runners run as real processes (`python -m piml.runner`) with `runner_env`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.queue.helpers import REPO, SECRETS, free_port, stop, wait_for

MODEL_NAME = "piml-test-iris"


@dataclass
class RedisServer:
    port: int
    password: str

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed: run tests/queue/install-deps.sh as root")
    workdir = tmp_path_factory.mktemp("redis")
    server = RedisServer(free_port(), secrets.token_urlsafe(18))
    SECRETS.append(server.password)
    log = workdir / "redis.log"
    proc = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(server.port),
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            server.password,
            "--logfile",
            str(log),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        import redis

        client = redis.Redis(port=server.port, password=server.password, socket_connect_timeout=1)
        wait_for(client.ping, 20, "redis-server", proc, log)
        client.close()
        yield server
    finally:
        stop(proc)


@dataclass
class MlflowServer:
    url: str
    username: str
    password: str
    artifacts: Path
    env: dict = field(default_factory=dict)


@contextmanager
def mlflow_on(data: Path, password: str, config_dir: Path) -> Iterator[MlflowServer]:
    """A real `mlflow server` (basic auth) whose stores lie in `data` as in piml's MLflow pod's /mlflow
    (mlflow.db, basic_auth.db, artifacts/), on a loopback port; stopped at exit, its files kept."""
    port = free_port()
    auth_ini = config_dir / "basic_auth.ini"
    auth_ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{data}/basic_auth.db\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}",
    }
    log = config_dir / "server.log"
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--app-name",
                "basic-auth",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{data}/mlflow.db",
                "--artifacts-destination",
                str(data / "artifacts"),
                "--allowed-hosts",
                f"127.0.0.1:{port},localhost:{port}",
            ],
            cwd=config_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: urllib.request.urlopen(f"{url}/health", timeout=2).status == 200, 120, "mlflow server", proc, log
        )
        yield MlflowServer(
            url,
            "admin",
            password,
            data / "artifacts",
            {"MLFLOW_TRACKING_URI": url, "MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password},
        )
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mlflow")
    password = secrets.token_urlsafe(18)
    SECRETS.append(password)
    with mlflow_on(workdir, password, workdir) as server, pytest.MonkeyPatch.context() as environ:
        for key, value in server.env.items():  # put back at the end
            environ.setenv(key, value)
        yield server


@dataclass
class Model:
    uri: str
    alias_uri: str
    sklearn: object
    features: list[str]


def log_and_register(estimator, X, name: str, trusted: tuple[str, ...] = ()) -> str:
    """Log a fitted scikit-learn estimator in a new run and register it under `name`; its new version.
    `trusted`: the skops types MLflow 3 wants named when it logs them (trees: sklearn.tree._tree.Tree)."""
    import mlflow
    from mlflow.models import infer_signature

    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            estimator,
            name="model",
            signature=infer_signature(X, estimator.predict(X)),
            registered_model_name=name,
            pip_requirements=["scikit-learn"],
            **({"skops_trusted_types": list(trusted)} if trusted else {}),
        )
    return str(info.registered_model_version)


@pytest.fixture(scope="session")
def registered_model(mlflow_server):
    """A real scikit-learn classifier, logged and registered (version 1, alias `champion`)."""
    import mlflow
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    iris = load_iris(as_frame=True)
    X = iris.data.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    model = LogisticRegression(max_iter=500).fit(X, iris.target)
    mlflow.set_experiment("piml-tests")
    version = log_and_register(model, X, MODEL_NAME)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(MODEL_NAME, "champion", version)
    assert isinstance(X, pd.DataFrame)
    return Model(f"models:/{MODEL_NAME}/{version}", f"models:/{MODEL_NAME}@champion", model, list(X.columns))


@pytest.fixture(scope="session")
def dataset(tmp_path_factory, registered_model):
    """The rows to predict: 450 iris-like rows (the data set three times, jittered), as CSV."""
    import numpy as np
    import pandas as pd
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True).data
    iris.columns = registered_model.features
    rng = np.random.default_rng(7)
    frame = pd.concat([iris] * 3, ignore_index=True) + rng.normal(0, 0.2, (len(iris) * 3, 4))
    path = tmp_path_factory.mktemp("data") / "iris.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def runner_env(redis_server, mlflow_server):
    env = {
        **os.environ,
        **mlflow_server.env,
        "PIML_QUEUE_URL": redis_server.url,
        "PYTHONPATH": str(REPO),
        "PIML_LEASE_SECONDS": "2",
        "PIML_RETRIES": "2",
        "PIML_RUNNER_WAIT": "10",
    }
    env.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)
    return env


@dataclass
class RabbitServer:
    port: int
    password: str

    @property
    def url(self) -> str:
        return f"amqp://piml:{self.password}@127.0.0.1:{self.port}/"


@contextmanager
def rabbit_node(workdir: Path, server: RabbitServer, nodename: str) -> Iterator[RabbitServer]:
    """Debian's rabbitmq-server run directly as this user, its files under `workdir` (kept: a second node started
    on the same dir sees the first one's data, under its node name), on loopback ports; stopped at exit."""
    binary = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if not binary.exists():
        pytest.fail("rabbitmq-server is not installed: run tests/queue/install-deps.sh as root")
    for name in ("mnesia", "log", "plugins"):
        (workdir / name).mkdir(exist_ok=True)
    (workdir / "enabled_plugins").write_text("[].\n")
    (workdir / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{server.port}\nloopback_users = none\n"
        f"default_user = piml\ndefault_pass = {server.password}\n"
    )
    env = {
        **os.environ,
        "HOME": str(workdir),
        "RABBITMQ_NODENAME": nodename,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(server.port),
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq"),
        "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(workdir / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
        "RABBITMQ_PLUGINS_EXPAND_DIR": str(workdir / "plugins"),
        "RABBITMQ_FEATURE_FLAGS_FILE": str(workdir / "mnesia/ff"),
    }
    log = workdir / "server.log"
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [str(binary)], env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        import pika

        def up():
            pika.BlockingConnection(pika.URLParameters(server.url + "?connection_attempts=1&socket_timeout=2")).close()
            return True

        wait_for(up, 90, "rabbitmq-server", proc, log)
        yield server
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def rabbitmq_server(tmp_path_factory):
    """A RabbitMQ node of its own on loopback ports."""
    server = RabbitServer(free_port(), secrets.token_urlsafe(18))
    SECRETS.append(server.password)
    with rabbit_node(tmp_path_factory.mktemp("rabbitmq"), server, f"piml-test-{server.port}@localhost") as node:
        yield node
