"""Shared test fixtures. Test nodes (systemd-nspawn machines) come from tests/nodes/, real services from tests/services.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytest_plugins = [
    "tests.nodes.pytest_plugin",  # real SSH test nodes: node_factory, three_nodes
    "tests.services",  # real Redis, MLflow (basic auth, a registered model), RabbitMQ on loopback
]


def run_piml(*args: str, cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real `piml` entry point in a subprocess, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "piml", *args], cwd=cwd, input=input, capture_output=True, text=True, timeout=120
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
