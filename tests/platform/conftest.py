"""Fixtures for the platform tests: the Kubernetes API stand-in and a pi5-3x8gb project pointed at it."""

from __future__ import annotations

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
SCENARIO = Path(__file__).resolve().parents[1] / "render" / "scenarios" / "pi5-3x8gb.yml"
# Small, bounded waits: the stand-in "installs" CRDs after 0.3 s and makes pods ready after 0.1 s.
FAST = Timeouts(crds=5.0, ready=5.0, total=30.0, poll=0.05, request=5.0)
SHORT = Timeouts(crds=1.0, ready=2.0, total=10.0, poll=0.05, request=5.0)  # for waits that are meant to time out


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
        return Cluster(ProjectPaths(self.root, SCENARIO), load_inventory(SCENARIO), PimlConfig.model_validate(settings or {}))

    def plan(self, settings: dict | None = None):
        """Plan as `piml up` does: against the live cluster, so services stay where their volumes are."""
        cluster = self.cluster(settings)
        return make_plan(cluster, pins=read_pins(cluster, self.kubeconfig))

    def render(self, settings: dict | None = None):
        cluster = self.cluster(settings)
        return cluster, render_platform(cluster, self.plan(settings), self.secrets)


@pytest.fixture
def make_api():
    """Start stand-ins with chosen settings; all are stopped at the end of the test."""
    started = []

    def _make(**kwargs) -> FakeKubeAPI:
        api = FakeKubeAPI(**kwargs).start()
        started.append(api)
        return api

    yield _make
    for api in started:
        api.stop()


@pytest.fixture
def kubeapi(make_api) -> FakeKubeAPI:
    return make_api()


@pytest.fixture
def project(tmp_path, kubeapi) -> Project:
    return Project(tmp_path / "lab", kubeapi)


@pytest.fixture
def make_project(tmp_path):
    def _make(api: FakeKubeAPI) -> Project:
        return Project(tmp_path / "lab", api)

    return _make
