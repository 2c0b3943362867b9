"""A piml project pointed at the kubeapi STAND-IN, for the tests that still need what the real control plane
(tests/controlplane) cannot do yet: exec and port-forward into pods bridged to local real services (the deep
check and the cluster rows of `piml check`, tests/health). See README.md."""

from __future__ import annotations

from pathlib import Path

from piml.config import PimlConfig
from piml.inventory import load_inventory
from piml.kube.wait import Timeouts
from piml.plan import make_plan
from piml.plan.pins import read_pins
from piml.project import Cluster, ProjectPaths
from piml.render import render_platform
from piml.secrets import load_or_create
from tests.standins.kubeapi.server import FakeKubeAPI

# Nodes on loopback ports where nothing listens: SSH fails at once, and no traffic leaves the machine.
LOOPBACK_INVENTORY = """
k3s_cluster:
  children:
    server:
      hosts:
        pi1: {ansible_host: 127.0.0.1, ansible_port: 9, piml_model: pi5, piml_memory_gb: 8}
    agent:
      hosts:
        pi2: {ansible_host: 127.0.0.2, ansible_port: 9, piml_model: pi5, piml_memory_gb: 8}
"""
SCENARIO = Path(__file__).resolve().parents[2] / "render" / "scenarios" / "pi5-3x8gb.yml"
# Small, bounded waits: the stand-in "installs" CRDs after 0.3 s and makes pods ready after 0.1 s.
FAST = Timeouts(crds=5.0, ready=5.0, total=30.0, poll=0.05, request=5.0)


class Project:
    """A piml project directory (named `lab`) whose .piml/kubeconfig points at the stand-in."""

    def __init__(self, root: Path, api: FakeKubeAPI):
        self.root, self.api = root, api
        self.root.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = root / ".piml" / "kubeconfig"
        self.kubeconfig.parent.mkdir(exist_ok=True)
        api.write_kubeconfig(self.kubeconfig)
        self.secrets = load_or_create(root / ".piml")

    def cluster(self, settings: dict | None = None) -> Cluster:
        return Cluster(
            ProjectPaths(self.root, SCENARIO), load_inventory(SCENARIO), PimlConfig.model_validate(settings or {})
        )

    def render(self, settings: dict | None = None):
        cluster = self.cluster(settings)
        return cluster, render_platform(
            cluster, make_plan(cluster, pins=read_pins(cluster, self.kubeconfig)), self.secrets
        )
