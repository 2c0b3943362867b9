"""`piml up --only ray-external` on a real host: a test node (Debian bookworm, systemd, sshd) plays the GPU box
outside Kubernetes, and a real Ray head (`ray start --head`, the pinned Ray, token authentication, the project's
Ray token) on this machine's test bridge plays the cluster's head, its GCS on the port piml.yaml gives the NodePort.

piml finds the head the way it does on a cluster: its pod (and node address) through the Kubernetes API, its
dashboard through a port-forward. That API is the kubeapi STAND-IN (tests/standins/kubeapi), holding one head pod
on the bridge's address and bridging its port-forward to the real dashboard: the real control plane's kubelet
stand-in serves no port-forward yet (#11), and no real Ray head pod can run here (no images).

The stage installs Ray from a wheel directory made here (test nodes have no internet), writes the systemd unit,
starts it, and waits until the head lists the node ALIVE with its resources; then a Ray task that asks for the
host's custom resource runs there. Re-runs change nothing; a changed resource restarts the worker; a stopped host
is a warning, not a failure."""

from __future__ import annotations

import fcntl
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from piml.config import RAY_VERSION  # piml's pin: what the nodes install and the head runs
from piml.rayext.nodes import alive_external
from tests.ports import free_port
from tests.queue.helpers import wait_for
from tests.raytools import VENV_BIN, ray_head_running

pytestmark = pytest.mark.nodes

POD_CIDR = "10.42.0.0/24"  # k3s gives each node a /24 of 10.42.0.0/16
CACHE = Path(os.environ.get("PIML_CONTRACT_CACHE", "/var/cache/piml-contract"))


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """ray[default] and its dependencies as wheels for the test nodes (x86_64, CPython 3.11), made once with pip's
    cache and kept under /var/cache; a user's offline mirror looks the same."""
    home = CACHE / f"ray-wheels-{RAY_VERSION}"
    done = home / ".piml-complete"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".ray-wheels.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(home, ignore_errors=True)
            out = subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(home)]
                + [f"ray[default]=={RAY_VERSION}"],
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert out.returncode == 0, out.stderr[-2000:]
            done.write_text("")
    return home


@pytest.fixture(scope="module")
def wheel_server(wheelhouse, node_substrate):
    """The wheel directory over HTTP on the test bridge (what pip's --find-links reads)."""
    handler = functools.partial(QuietHandler, directory=str(wheelhouse))
    server = http.server.ThreadingHTTPServer((node_substrate.gateway, free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://{node_substrate.gateway}:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def node_port() -> int:
    """A free port in Kubernetes' NodePort range (the kernel hands out ephemeral ports above it)."""
    import random
    import socket

    for port in random.sample(range(30000, 32768), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port in 30000-32767")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def gpubox(node_factory):
    (node,) = node_factory(1, model="other", names=["gpubox"])
    yield node
    node_factory.destroy([node])


def project(piml, base: Path, node, gateway: str, host_vars: dict, settings: dict):
    """A project whose server is never reached here and whose ray_external group holds the test node."""
    out = piml("init", "lab", "--ssh-key", node.key_path, "--node", f"srv={gateway.rsplit('.', 1)[0]}.250:server",
               "--node", f"{node.name}={node.address}:external", cwd=base)  # fmt: skip
    assert out.returncode == 0, out.stderr
    root = base / "lab"
    inventory = root / "inventory/hosts.yml"
    data = yaml.safe_load(inventory.read_text())
    data["ray_external"]["hosts"][node.name].update(host_vars)
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    (root / "piml.yaml").write_text(yaml.safe_dump(settings))
    (root / ".piml").mkdir(exist_ok=True)
    (root / ".piml/known_hosts").write_text(Path(node.known_hosts).read_text())
    return root


@contextmanager
def cluster_api(root: Path, gateway: str, dashboard_port: int, node_port: int):
    """The kubeapi stand-in with the head's pod (on a node at `gateway`), its dashboard port bridged, and the
    Service ray-head-external as the API server holds it once it has allocated its NodePort."""
    from kubernetes import client, config

    from tests.standins.kubeapi.server import FakeKubeAPI

    api = FakeKubeAPI().start()
    try:
        api.write_kubeconfig(root / ".piml/kubeconfig")
        core = client.CoreV1Api(config.new_client_from_config(str(root / ".piml/kubeconfig")))
        core.create_namespace({"metadata": {"name": "piml"}})
        port = {"name": "gcs", "port": 6379, "targetPort": 6379, "protocol": "TCP", "nodePort": node_port}
        spec = {"type": "NodePort", "selector": {"ray.io/cluster": "ray", "ray.io/node-type": "head"}, "ports": [port]}
        core.create_namespaced_service("piml", {"metadata": {"name": "ray-head-external"}, "spec": spec})
        core.api_client.close()
        api.add_node("srv", address=gateway, pod_cidr=POD_CIDR)  # the head's node, as the k3s server it plays
        api.add_pod("piml", "ray-head-x7k2p", {"ray.io/cluster": "ray", "ray.io/node-type": "head"}, host_ip=gateway)
        api.forward("piml", "ray-head-x7k2p", 8265, dashboard_port, host=gateway)
        yield api
    finally:
        api.stop()


def up(piml, root: Path) -> tuple[dict, str]:
    out = piml("up", "--only", "ray-external", "--json", "-C", str(root), timeout=600)
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    assert out.stdout.startswith("{"), f"exit {out.returncode}: {out.stderr[-3000:]}"
    data = json.loads(out.stdout)
    return data, f"exit {out.returncode}: {json.dumps(data['stages'], indent=1)}\n{out.stderr[-2000:]}"


def check_rows(piml, root: Path) -> dict[str, dict]:
    """`piml check --json`'s rows about gpubox, by check (the stand-in API has no platform: the rest fail)."""
    out = piml("check", "--json", "-C", str(root), timeout=300)
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    return {row["check"]: row for row in json.loads(out.stdout)["checks"] if row["target"] == "gpubox"}


def status_row(piml, root: Path) -> dict:
    out = piml("status", "--json", "-C", str(root), timeout=120)
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    assert "gpubox" not in out.stderr  # asleep or not, a ray_external host does not make the cluster unhealthy
    return next(row for row in json.loads(out.stdout)["nodes"] if row["name"] == "gpubox")


def main_pid(sub, node) -> str:
    return sub.run(node, "systemctl show -p MainPID --value piml-ray-worker").stdout.strip()


def run_on_resource(head, resource: str) -> str:
    """A driver on this machine runs one task that needs `resource`; it answers the host name it ran on."""
    code = f"""
import ray, socket
ray.init(address={head.gcs_address!r}, _node_ip_address={head.gcs_address.split(":")[0]!r}, log_to_driver=False)
@ray.remote(resources={{{resource!r}: 1}}, num_cpus=0)
def where():
    return socket.gethostname()
print(ray.get(where.remote(), timeout=120))
"""
    out = subprocess.run(
        [os.path.join(VENV_BIN, "python"), "-c", code], env=head.env, capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_a_host_outside_kubernetes_joins_the_head_and_runs_what_asks_for_its_resource(
    piml, tmp_path, node_factory, gpubox, wheel_server
):
    from piml.secrets import load_or_create

    sub = node_factory.substrate
    gcs_port = node_port()
    pip_args = ["--no-index", "--find-links", wheel_server, "--trusted-host", sub.gateway]
    settings = {"ray": {"external": {"pip_args": pip_args, "wait_timeout": 180}}}  # the NodePort: Kubernetes'(below)
    host_vars = {"piml_ray_resources": {"gpu_test": 1}, "piml_ray_num_cpus": 1}
    root = project(piml, tmp_path, gpubox, sub.gateway, host_vars, settings)
    token = load_or_create(root / ".piml")["ray_auth_token"]  # the Secret ray-auth the platform renders
    with (
        ray_head_running({}, 1, {"RAY_AUTH_TOKEN": token}, node_ip=sub.gateway, gcs_port=gcs_port) as head,
        cluster_api(root, sub.gateway, int(head.dashboard_url.rsplit(":", 1)[1]), gcs_port),
    ):

        def stage():
            data, why = up(piml, root)
            return data["stages"]["ray-external"], data["ok"], why

        first, ok, why = stage()
        assert ok, why
        assert first["hosts"]["gpubox"]["ray"]["resources"]["gpu_test"] == 1
        assert first["hosts"]["gpubox"]["ray"]["resources"]["CPU"] == 1
        assert run_on_resource(head, "gpu_test") == "gpubox"
        rows = check_rows(piml, root)  # `piml check`: a row for the host itself, one for its Ray worker
        assert rows["reachable"]["status"] == "pass", rows
        assert rows["ray worker"]["status"] == "pass" and "gpu_test 1" in rows["ray worker"]["detail"], rows
        row = status_row(piml, root)  # `piml status`: the host's row says what the head says of it
        assert row["reachable"] and row["ray"].startswith("ALIVE: CPU 1") and "gpu_test 1" in row["ray"], row

        # what the host holds: the unit systemd itself accepts, the token readable by the worker's user only
        verify = sub.run(gpubox, "systemd-analyze verify /etc/systemd/system/piml-ray-worker.service 2>&1; echo rc=$?")
        assert verify.stdout.strip().endswith("rc=0"), verify.stdout
        mode = sub.run(gpubox, "stat -c '%a %U' /etc/piml/ray-auth-token").stdout.split()
        assert mode == ["600", gpubox.user]
        unit = sub.run(gpubox, "cat /etc/systemd/system/piml-ray-worker.service").stdout
        assert token not in unit and token not in sub.run(gpubox, "cat /etc/piml/ray-worker.env").stdout
        assert sub.run(gpubox, "systemctl is-enabled piml-ray-worker").stdout.strip() == "enabled"
        # the pods' network through the node that has it, while the worker runs (Ray pods advertise pod IPs)
        assert f"via {sub.gateway}" in sub.run(gpubox, f"ip route show {POD_CIDR}").stdout

        # a re-run changes nothing, and leaves the running worker alone
        pid = main_pid(sub, gpubox)
        again, ok, why = stage()
        assert ok and again["hosts"]["gpubox"]["changed"] == 0, why
        assert main_pid(sub, gpubox) == pid

        # a changed resource restarts that worker, and the head lists the new one
        data = yaml.safe_load((root / "inventory/hosts.yml").read_text())
        data["ray_external"]["hosts"]["gpubox"]["piml_ray_resources"] = {"gpu_test": 2}
        (root / "inventory/hosts.yml").write_text(yaml.safe_dump(data, sort_keys=False))
        changed, ok, why = stage()
        assert ok and changed["hosts"]["gpubox"]["ray"]["resources"]["gpu_test"] == 2, why
        assert main_pid(sub, gpubox) != pid

        # piml teardown: the worker stops and leaves the head; nothing piml put on the host stays
        out = piml("teardown", "--yes", "--json", "-C", str(root), timeout=300)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
        assert json.loads(out.stdout)["ray_external"]["hosts"]["gpubox"]["changed"] > 0
        left = sub.run(gpubox, "ls -d /opt/piml-ray /etc/piml/* /etc/systemd/system/piml-ray-worker.service 2>&1; true")
        assert "No such file" in left.stdout and "/opt/piml-ray\n" not in left.stdout, left.stdout
        assert sub.run(gpubox, "systemctl is-active piml-ray-worker", check=False).stdout.strip() == "inactive"
        assert sub.run(gpubox, f"ip route show {POD_CIDR}").stdout.strip() == ""  # the route went with it
        wait_for(lambda: "gpubox" not in alive_external(head.dashboard_url, token), 60, "gpubox leaving the head")

        # the host asleep: a warning on its row, the stage does not fail
        sub.stop(gpubox)
        asleep, ok, why = stage()
        assert ok, why
        assert "not reached" in asleep["warnings"]["gpubox"], why
        rows = check_rows(piml, root)
        assert rows["reachable"]["status"] == rows["ray worker"]["status"] == "warn", rows
        row = status_row(piml, root)
        assert not row["reachable"] and row["ray"] == "not ALIVE in the Ray head (asleep, stopped, not joined)", row
        out = piml("teardown", "--yes", "--json", "-C", str(root), timeout=300)  # nor does a teardown
        assert out.returncode == 0 and "not reached" in json.loads(out.stdout)["ray_external"]["warnings"]["gpubox"]
