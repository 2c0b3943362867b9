"""Fixtures for the platform tests: the REAL control plane of tests/controlplane (kube-apiserver, controller-manager,
scheduler v1.36.3, k3s's helm-controller, the KubeRay operator, local-path storage, Traefik's CRDs) with three
stand-in nodes, and a project whose inventory names those nodes.

One control plane per test module (starting one takes about ten seconds); each test gets a fresh project, and
its platform is purged after it, waited for as the real controllers delete it. Faults are injected into the
kubelet stand-in (tests/controlplane/faults.py); what piml asked, in order, is in the plane's audit log
(tests/controlplane/audit.py).
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from piml.config import PimlConfig
from piml.inventory import load_inventory
from piml.kube.wait import Timeouts
from piml.plan import make_plan
from piml.plan.pins import read_pins
from piml.project import Cluster, ProjectPaths
from piml.render import render_platform
from piml.secrets import load_or_create
from tests.controlplane import audit, faults
from tests.controlplane.test_control_plane import GO, cp
from tests.health.conftest import dask_cluster, ray_head  # noqa: F401 - real services (test_check_command)
from tests.ports import free_port

# pi5-3x8gb (tests/render/scenarios) on the plane's nodes; SSH to them fails at once (loopback port 9), so the
# CLI's node stages and rows fail fast and nothing leaves the machine.
INVENTORY = """
k3s_cluster:
  children:
    server:
      hosts:
        node-1: {ansible_host: 127.0.0.1, ansible_port: 9, piml_storage: nvme}
    agent:
      hosts:
        node-2: {ansible_host: 127.0.0.2, ansible_port: 9}
        node-3: {ansible_host: 127.0.0.3, ansible_port: 9}
  vars: {piml_model: pi5, piml_memory_gb: 8}
"""
NODES = ("node-1", "node-2", "node-3")
# The stand-in nodes look at their pods once a second; the operators and controllers answer within seconds.
FAST = Timeouts(crds=60.0, ready=60.0, total=180.0, poll=0.2, request=10.0)
SHORT = Timeouts(crds=60.0, ready=20.0, total=120.0, poll=0.2, request=10.0)  # for waits meant to time out


class Plane:
    """A running control plane: its directory, kubeconfig, faults and audit log."""

    def __init__(self, d: Path):
        self.dir = d
        self.kubeconfig = d / "kubeconfig"

    def inject(self, owner: str, fault: str, logs: list[str] | None = None) -> None:
        faults.inject(self.dir, owner, fault, logs)

    def requests(self) -> list[audit.Request]:
        return audit.requests(self.dir)

    def kube(self):
        from piml.kube.client import connect

        return connect(self.kubeconfig, request_timeout=10)


def start_plane(tmp_path_factory, *args: str) -> Plane:
    if GO is None:
        pytest.skip("Go is not installed (needed to build the control plane)")
    build = cp("build", timeout=3 * 3600)  # cold: tens of minutes once; then reused from the cache
    assert build.returncode == 0, build.stderr
    d = tmp_path_factory.mktemp("cp") / "plane"
    r = cp("up", str(d), "--nodes", "3", "--node-memory", "8Gi", "--arch", "arm64", *args, timeout=300)
    assert r.returncode == 0, r.stderr
    return Plane(d)


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    p = start_plane(tmp_path_factory)
    yield p
    cp("down", str(p.dir), timeout=60)


@pytest.fixture
def own_plane(tmp_path_factory):
    """Starts planes of the test's own (other node sizes, faults from the start); stops them after the test."""
    started: list[Plane] = []

    def start(*args: str) -> Plane:
        started.append(start_plane(tmp_path_factory, *args))
        return started[-1]

    yield start
    for p in started:
        cp("down", str(p.dir), timeout=60)


@pytest.fixture(scope="session")
def kubectl() -> Path:
    """The real kubectl at the plane's version (`k3s kubectl` is kubectl), built once (tests/controlplane/build.py)."""
    from tests.controlplane import build

    if GO is None:
        pytest.skip("Go is not installed (needed to build kubectl)")
    return build.kubectl(log=lambda _m: None)


class Project:
    """A piml project directory (named `lab`) whose .piml/kubeconfig is the plane's."""

    def __init__(self, root: Path, plane: Plane):
        self.root, self.plane = root, plane
        (root / "inventory").mkdir(parents=True, exist_ok=True)
        self.inventory = root / "inventory" / "hosts.yml"
        self.inventory.write_text(INVENTORY)
        self.kubeconfig = root / ".piml" / "kubeconfig"
        self.kubeconfig.parent.mkdir(exist_ok=True)
        shutil.copy(plane.kubeconfig, self.kubeconfig)
        self.kubeconfig.chmod(0o600)
        self.secrets = load_or_create(root / ".piml")

    def cluster(self, settings: dict | None = None) -> Cluster:
        return Cluster(
            ProjectPaths(self.root, self.inventory),
            load_inventory(self.inventory),
            PimlConfig.model_validate(settings or {}),
        )

    def plan(self, settings: dict | None = None):
        """Plan as `piml up` does: against the live cluster, so services stay where their volumes are."""
        cluster = self.cluster(settings)
        return make_plan(cluster, pins=read_pins(cluster, self.kubeconfig))

    def render(self, settings: dict | None = None):
        cluster = self.cluster(settings)
        return cluster, render_platform(cluster, self.plan(settings), self.secrets)


@contextmanager
def api_gone(project: Project):
    """The project's kubeconfig points at a loopback port where nothing listens (the API server down), for the
    block; yields that server URL."""
    port = free_port()
    text = project.kubeconfig.read_text()
    server = next(line.split("server: ")[1] for line in text.splitlines() if "server: " in line)
    project.kubeconfig.write_text(text.replace(server, f"https://127.0.0.1:{port}"))
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        project.kubeconfig.write_text(text)


def purge(project: Project) -> None:
    """Remove the project's platform, data included, and wait (bounded) until the cluster has let it go."""
    from piml.kube.teardown import teardown_platform

    faults.clear(project.plane.dir)
    report = teardown_platform(project.cluster(), project.kubeconfig, purge=True, timeout=120, poll=0.2)
    assert not report.waiting_for, (
        f"still deleting after the test: {report.waiting_for}\n{controller_account(project.plane, report.waiting_for)}"
    )


def controller_account(plane: Plane, waiting_for: dict[str, str]) -> str:
    """What the plane's controllers and nodes logged about the objects still there (the logs go with the plane, so
    a failure must carry them): the last lines naming each object's name."""
    names = {w.split("/")[-1].split()[0] for w in waiting_for}
    out = []
    for log in ("helm-controller.log", "kube-controller-manager.log", "nodes.log"):
        path = plane.dir / "logs" / log
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        hits = [line[:400] for line in lines if any(n in line for n in names)]
        out += [f"--- {log}: last of {len(hits)} lines naming {sorted(names)}", *hits[-15:]]
    out.append("--- the Helm controller's jobs and pods in kube-system")
    try:
        kube = plane.kube()
        try:
            for plural, base in (("jobs", "/apis/batch/v1"), ("pods", "/api/v1")):
                for o in (kube.get(f"{base}/namespaces/kube-system/{plural}") or {}).get("items", []):
                    meta = o["metadata"]
                    if meta["name"].startswith(("helm-install-", "helm-delete-")):
                        gone = " deleting" if meta.get("deletionTimestamp") else ""
                        out.append(f"{plural} {meta['name']}{gone}: {_brief(o.get('status') or {})}")
        finally:
            kube.close()
    except Exception as e:  # noqa: BLE001 - an account of a failure must not hide it
        out.append(f"(could not list them: {e})")
    return "\n".join(out)


def _brief(status: dict) -> str:
    """A Job's or a pod's status in a line: counts, phase, conditions that hold, containers' waiting reasons."""
    keys = ("active", "succeeded", "failed", "terminating", "phase")
    parts = [f"{k}={status[k]}" for k in keys if status.get(k) not in (None, 0)]
    parts += [c["type"] for c in status.get("conditions") or [] if c.get("status") == "True"]
    for c in status.get("containerStatuses") or []:
        waiting = (c.get("state") or {}).get("waiting")
        parts += [f"{c['name']} waiting: {waiting.get('reason')}"] if waiting else []
    return ", ".join(parts) or "(no status)"


@pytest.fixture
def project(tmp_path, plane) -> Project:
    p = Project(tmp_path / "lab", plane)
    yield p
    purge(p)
