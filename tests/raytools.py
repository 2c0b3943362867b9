"""Helpers for the tests that start real Ray and Dask processes (tests/health, tests/serve): a Ray head started
with `ray start --head` on loopback, end a process group and whatever it left behind, ask a Ray dashboard whether
it answers and how many nodes are alive."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port
from tests.queue.helpers import REPO, wait_for

VENV_BIN = str(Path(sys.executable).parent)
MARKER = "PIML_TEST_SERVICE"


def kill_marked(marker: str) -> None:
    """SIGKILL every process whose environment has MARKER=marker (the fixture's own processes only)."""
    needle = f"{MARKER}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def end(proc: subprocess.Popen, marker: str) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    kill_marked(marker)


def http_ok(url: str, token: str | None = None) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=2) as response:
        return response.status == 200


def alive_nodes(url: str, token: str) -> int:
    import json

    request = urllib.request.Request(f"{url}/api/v0/nodes", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return sum(node["state"] == "ALIVE" for node in json.load(response)["data"]["result"]["result"])


@dataclass
class RayHead:
    dashboard_url: str
    log: Path
    env: dict
    token: str  # token authentication on, as the platform runs Ray (authOptions mode token)
    temp: Path  # Ray's temp dir: its session logs are under session_latest/logs
    gcs_address: str = ""  # host:port, what `ray start --address` joins


@contextmanager
def ray_head_running(
    mlflow_env: dict,
    num_cpus: int,
    extra_env: dict | None = None,
    resources: dict | None = None,
    node_ip: str = "127.0.0.1",
    gcs_port: int | None = None,
) -> Iterator[RayHead]:
    """A Ray head (`ray start --head --block`) whose processes all bind to `node_ip` (loopback, or the test nodes'
    bridge for workers that join from them) on free ports, in a temp dir of their own, with token authentication
    and MLflow's address and credentials in their environment (as the cluster's Ray pods have them); ended at
    exit, also on failure, with whatever it started."""
    marker = secrets.token_hex(8)
    token = (extra_env or {}).get("RAY_AUTH_TOKEN") or secrets.token_hex(32)  # a project's own, or a new one
    temp = Path(tempfile.mkdtemp(prefix="piml-ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    names = ("port", "dashboard-port", "ray-client-server-port", "dashboard-agent-listen-port")
    names += ("dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")
    ports = {name: free_port() for name in (*names, "node-manager-port", "object-manager-port")}
    ports["port"] = gcs_port or ports["port"]
    env = {
        **os.environ,
        **mlflow_env,
        MARKER: marker,
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "PYTHONPATH": str(REPO),  # piml's code, as the ConfigMaps mounted in the Ray pods provide it
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        **(extra_env or {}),
    }
    env.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)
    log = temp / "ray-start.log"
    args = [os.path.join(VENV_BIN, "ray"), "start", "--head", "--block", f"--num-cpus={num_cpus}"]
    args += [f"--dashboard-host={node_ip}", "--include-dashboard=true", "--disable-usage-stats"]
    if node_ip != "127.0.0.1":
        args.append(f"--node-ip-address={node_ip}")
    args += [f"--temp-dir={temp}", "--object-store-memory=100000000"]
    if resources:  # custom resources, as a KubeRay group's `resources` gives its pods
        args.append(f"--resources={json.dumps(resources)}")
    args += [f"--{name}={port}" for name, port in ports.items()]
    with open(log, "w") as out:
        proc = subprocess.Popen(args, env=env, cwd=temp, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://{node_ip}:{ports['dashboard-port']}"
    try:
        wait_for(lambda: http_ok(f"{url}/api/jobs/", token) and alive_nodes(url, token), 90, "ray head", proc, log)
        yield RayHead(url, log, env, token, temp, f"{node_ip}:{ports['port']}")
    finally:
        end(proc, marker)
        shutil.rmtree(temp, ignore_errors=True)
