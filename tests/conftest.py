"""Shared test fixtures. Test nodes (systemd-nspawn machines) come from tests/nodes/, real services from tests/services.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest_plugins = [
    "tests.nodes.pytest_plugin",  # real SSH test nodes: node_factory, three_nodes
    "tests.services",  # real Redis, MLflow (basic auth, a registered model), RabbitMQ on loopback
]


def run_piml(
    *args: str, cwd: Path | None = None, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run the real `piml` entry point in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "piml", *args], cwd=cwd, input=input, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def piml():
    return run_piml


@pytest.fixture
def write(tmp_path):
    """Write a file under tmp_path from dedented text and return its path."""
    import textwrap

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return _write


# -- the classes of slow tests, and the fast loop -------------------------------------------------------------------
# Markers by what a test uses (its fixtures) and where it lives, so no test has to remember to carry them:
#   nodes: real SSH test nodes (systemd-nspawn, root); root: needs root (pod namespaces, loop devices);
#   services: real Redis, MLflow, RabbitMQ, Ray or Dask processes; contract: the rendered containers' programs;
#   controlplane: the Kubernetes control plane built from Go modules.
# `scripts/test --fast` runs what carries none of them.
SERVICE_FIXTURES = {
    "redis_server",
    "mlflow_server",
    "rabbitmq_server",
    "ray_head",
    "dask_cluster",
    "idle_dask",
    "own_redis",
    "s3_server",
}
NODE_FIXTURES = {"node_substrate", "node_factory", "three_nodes"}


def pytest_configure(config: pytest.Config) -> None:
    for name, what in (
        ("root", "needs root (network namespaces, loop devices)"),
        ("services", "runs real Redis / MLflow / RabbitMQ / Ray / Dask processes on loopback"),
        ("controlplane", "runs the Kubernetes control plane built from Go modules (tests/controlplane)"),
    ):
        config.addinivalue_line("markers", f"{name}: {what}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.path)).relative_to(REPO / "tests").parts
        used = set(getattr(item, "fixturenames", ()))
        if parts[0] == "contract":
            item.add_marker("contract")
            item.add_marker("root")
        if parts[0] == "controlplane" or used & {"plane", "own_plane"}:
            item.add_marker("controlplane")
        if used & NODE_FIXTURES or item.get_closest_marker("nodes"):
            item.add_marker("nodes")
            item.add_marker("root")
        if item.get_closest_marker("flash_root"):
            item.add_marker("root")
        if used & SERVICE_FIXTURES or parts[0] == "health":
            item.add_marker("services")


# A light virtualenv (`pip install -e '.[test-fast]'`) has none of the services' packages: the modules that import
# them at the top are not collected there. scripts/test (the full run, CI's) sets PIML_TEST_FULL, and then a
# missing package is an error, never a silently smaller suite.
HEAVY = {
    "pandas": ["queue/test_batches.py", "queue/test_runner.py", "queue/test_rabbitmq.py", "health/test_deep.py"],
    "mlflow": ["serve/test_payload.py"],
    "ray": ["render/test_serve_by_ray.py", "inventory/test_ray_external_by_ray.py"],
}


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


collect_ignore = [f for module, files in HEAVY.items() if _missing(module) for f in files]
if collect_ignore and os.environ.get("PIML_TEST_FULL"):
    raise pytest.UsageError(
        f"the full suite needs {', '.join(m for m in HEAVY if _missing(m))}: run scripts/test, which installs it"
    )
