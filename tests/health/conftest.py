"""Real services on loopback for the health checks: a Ray head (`ray start --head`, with the dashboard and its
Jobs API) and a Dask scheduler with one worker, once per session; Redis and MLflow come from tests/services.py.

Ray's processes all bind to 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps its node address on
loopback), on free ports, in a temp dir of their own. The head's environment carries MLFLOW_TRACKING_*, as
the cluster's Ray pods do, so the deep check's job logs to the test MLflow without being handed a password.
Every process a fixture starts is ended at teardown, also on failure: its process group, plus any process
that carries the fixture's marker variable (Ray starts job drivers in sessions of their own).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from piml.health.endpoints import Endpoints
from tests.health.helpers import local_dask_python
from tests.ports import free_port
from tests.queue.helpers import wait_for
from tests.raytools import MARKER, VENV_BIN, end, http_ok, ray_head_running


@pytest.fixture(scope="session")
def ray_head(mlflow_server):
    """A Ray head with one CPU and token authentication; its dashboard at `dashboard_url`."""
    with ray_head_running(mlflow_server.env, num_cpus=1) as head:
        yield head


@dataclass
class DaskCluster:
    address: str
    dashboard_url: str

    def python(self, script: str) -> str:
        return local_dask_python(self.address)(script)


def start_dask(tmp: Path, marker: str, workers: int) -> tuple[DaskCluster, list[subprocess.Popen]]:
    port, dashboard = free_port(), free_port()
    env = {**os.environ, MARKER: marker}
    procs = []
    with open(tmp / "scheduler.log", "w") as out:
        procs.append(
            subprocess.Popen(
                [
                    os.path.join(VENV_BIN, "dask"),
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--dashboard-address",
                    f"127.0.0.1:{dashboard}",
                    "--dashboard-prefix",
                    "/dask",
                ],
                env=env,
                cwd=tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    cluster = DaskCluster(f"tcp://127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}/dask")  # the cluster's prefix
    for i in range(workers):
        with open(tmp / f"worker-{i}.log", "w") as out:
            procs.append(
                subprocess.Popen(
                    [
                        os.path.join(VENV_BIN, "dask"),
                        "worker",
                        cluster.address,
                        "--host",
                        "127.0.0.1",
                        "--nthreads",
                        "1",
                        "--no-nanny",
                        "--name",
                        f"worker-{i}",
                        "--local-directory",
                        str(tmp),
                        "--dashboard-address",
                        f"127.0.0.1:{free_port()}",
                    ],
                    env=env,
                    cwd=tmp,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    return cluster, procs


def dask_workers(cluster: DaskCluster) -> int:
    import json

    with urllib.request.urlopen(f"{cluster.dashboard_url}/json/counts.json", timeout=2) as response:
        return json.load(response)["workers"]


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """A Dask scheduler and one worker (one thread) on loopback ports."""
    marker = secrets.token_hex(8)
    tmp = tmp_path_factory.mktemp("dask")
    cluster, procs = start_dask(tmp, marker, workers=1)
    try:
        wait_for(lambda: dask_workers(cluster) == 1, 60, "dask scheduler and worker", procs[0], tmp / "scheduler.log")
        yield cluster
    finally:
        for proc in reversed(procs):
            end(proc, marker)


@pytest.fixture(scope="session")
def idle_dask(tmp_path_factory):
    """A Dask scheduler without workers (as when every worker pod is gone)."""
    marker = secrets.token_hex(8)
    tmp = tmp_path_factory.mktemp("dask-idle")
    cluster, procs = start_dask(tmp, marker, workers=0)
    try:
        wait_for(
            lambda: http_ok(f"{cluster.dashboard_url}/health"), 60, "dask scheduler", procs[0], tmp / "scheduler.log"
        )
        yield cluster
    finally:
        end(procs[0], marker)


@pytest.fixture
def endpoints(mlflow_server, redis_server, dask_cluster, ray_head) -> Endpoints:
    """Every component healthy, as `piml check` would see a cluster through its port-forwards."""
    return Endpoints(
        mlflow_url=mlflow_server.url,
        mlflow_user=mlflow_server.username,
        mlflow_password=mlflow_server.password,
        dask_dashboard_url=dask_cluster.dashboard_url,
        dask_python=dask_cluster.python,
        ray_dashboard_url=ray_head.dashboard_url,
        ray_token=ray_head.token,
        queue_url=f"redis://127.0.0.1:{redis_server.port}/0",
        queue_password=redis_server.password,
    )


@pytest.fixture
def clean_redis(redis_server):
    import redis

    client = redis.Redis(port=redis_server.port, password=redis_server.password)
    client.flushdb()
    client.close()
