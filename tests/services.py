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

from tests.ports import free_port
from tests.queue.helpers import REPO, SECRETS, stop, wait_for

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


# -- S3 ---------------------------------------------------------------------------------------------------------------
# Not S3 itself (no S3 server can be had here: see tests/contract/images.S3_STANDIN): moto's S3 server, with its
# IAM checks on, so that a request our own signer got wrong is refused as AWS refuses it (moto recomputes each
# signature with botocore's S3SigV4Auth). The first SETUP_REQUESTS requests (a user, its policy, its keys, a bucket)
# are let through unsigned; every later one must carry a valid signature of that user's keys. It does not check
# that a body matches its x-amz-content-sha256, as AWS does.
S3_SETUP = """
import boto3, json, sys
url, bucket = sys.argv[1], sys.argv[2]
anyone = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
iam = boto3.client("iam", **anyone)
iam.create_user(UserName="piml-backup")
policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
iam.put_user_policy(UserName="piml-backup", PolicyName="s3", PolicyDocument=json.dumps(policy))
key = iam.create_access_key(UserName="piml-backup")["AccessKey"]
boto3.client("s3", **anyone).create_bucket(Bucket=bucket)
print(json.dumps([key["AccessKeyId"], key["SecretAccessKey"]]))
"""
S3_SETUP_REQUESTS = 4
S3_READ = """
import boto3, json, sys
url, bucket, access, secret, out = sys.argv[1:6]
keys = dict(aws_access_key_id=access, aws_secret_access_key=secret)
s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", **keys)
found = {}
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
    for item in page.get("Contents", []):
        found[item["Key"]] = item["Size"]
        if out != "-":
            s3.download_file(bucket, item["Key"], out + "/" + item["Key"].replace("/", "__"))
print(json.dumps(found))
"""


@dataclass
class S3Server:
    url: str
    bucket: str
    access_key: str
    secret_key: str
    python: Path
    proc: subprocess.Popen | None = None

    def objects(self, download_to: Path | None = None) -> dict[str, int]:
        """The bucket's keys and sizes, read with boto3 (and downloaded, '/' in a key as '__', when asked)."""
        import json

        args = [self.url, self.bucket, self.access_key, self.secret_key, str(download_to or "-")]
        result = subprocess.run([str(self.python), "-c", S3_READ, *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads(result.stdout)


@pytest.fixture
def s3_server(tmp_path):
    """A bucket `pi-backups` on a moto S3 server of its own (per test: its state is all in memory), with a user
    whose keys may do anything in S3."""
    import json
    import socket

    from tests.contract import images

    bin_dir = images.s3_standin().bin
    assert bin_dir is not None
    port = free_port()
    log = tmp_path / "moto.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": str(S3_SETUP_REQUESTS)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True,
            60,
            "moto_server",
            proc,
            log,
        )
        made = subprocess.run(
            [str(bin_dir / "python"), "-c", S3_SETUP, url, "pi-backups"], capture_output=True, text=True, timeout=120
        )
        assert made.returncode == 0, made.stderr[-2000:]
        access, secret = json.loads(made.stdout)
        SECRETS.append(secret)
        yield S3Server(url, "pi-backups", access, secret, bin_dir / "python", proc)
    finally:
        stop(proc)


@dataclass
class PostgresServer:
    """A real PostgreSQL listening only on a unix socket in `socket_dir` (what PGHOST names); `bindir`: its
    programs (pg_dump, psql)."""

    socket_dir: Path
    bindir: Path
    user: str

    def url(self, database: str) -> str:
        """SQLAlchemy's URL for MLflow's store (psycopg 3, what piml's MLflow image installs)."""
        return f"postgresql+psycopg://{self.user}@/{database}?host={self.socket_dir}"

    def connect(self, database: str):
        import psycopg

        return psycopg.connect(host=str(self.socket_dir), user=self.user, dbname=database, connect_timeout=10)


@contextmanager
def postgres_on(user: str = "mlflow", database: str = "mlflow") -> Iterator[PostgresServer]:
    """Debian's newest PostgreSQL, set up as the official image's entrypoint sets up its first start: `user` the
    superuser, local connections trusted (initdb's default, which the image keeps), `database` made. Only a unix
    socket, in a directory of its own (the image's is /var/run/postgresql), no TCP. Stopped at exit."""
    import pwd
    import tempfile

    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not versions:
        pytest.skip("PostgreSQL is not installed: run tests/contract/install-deps.sh as root")
    bindir = versions[-1]
    base = Path(tempfile.mkdtemp(prefix="piml-postgres-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        owner = pwd.getpwnam("postgres")
        os.chown(base, owner.pw_uid, owner.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    data, sockets, log = base / "data", base / "run", base / "postgres.log"

    def run(*argv: str) -> None:
        done = subprocess.run([*as_postgres, *argv], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{argv[0]}: {done.stderr or done.stdout}"

    run("mkdir", "-m", "0700", str(sockets))
    run(str(bindir / "initdb"), "-D", str(data), f"--username={user}", "--auth-local=trust",
        "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8")  # fmt: skip
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data), "-t", "30", "-w"]
    run(*pg_ctl, "-l", str(log), "-o", f"-k {sockets} -c listen_addresses=''", "start")
    try:
        run(str(bindir / "psql"), "-X", "-h", str(sockets), "-U", user, "-d", "postgres", "-v", "ON_ERROR_STOP=1",
            "-c", f"CREATE DATABASE {database}")  # fmt: skip
        yield PostgresServer(sockets, bindir, user)
    finally:
        subprocess.run([*as_postgres, *pg_ctl, "-m", "fast", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
