"""ray_external hosts (machines outside Kubernetes) do not hold `piml up` up: reached next to the k3s nodes, waited
for only a moment after them, and never a failure. On loopback, no test nodes: a k3s node whose port refuses at once
and a ray_external "host" that accepts TCP and never says a word (SSH banner timeout, like a half-asleep machine)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import yaml

from piml.config import PimlConfig
from piml.inventory import Node, Role
from piml.preflight import preflight
from piml.project import ProjectPaths
from piml.reach import reach
from tests.ports import free_port


@pytest.fixture
def silent():
    """A listener on 127.0.0.2 that accepts connections and never answers (the SSH banner never comes)."""
    server = socket.socket()
    server.bind(("127.0.0.2", 0))
    server.listen(8)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def refused():
    """A loopback port nothing listens on: connecting is refused at once."""
    return free_port()


def test_reach_waits_for_a_silent_ray_external_host_only_a_grace(tmp_path, silent, refused):
    cluster = SimpleNamespace(paths=ProjectPaths(tmp_path, tmp_path / "inventory" / "hosts.yml"))
    server = Node(name="s1", address="127.0.0.1", port=refused, role=Role.SERVER, user="pi")
    mac = Node(name="macmini", address="127.0.0.2", port=silent, role=Role.EXTERNAL, user="pi")
    started = time.monotonic()
    reports = reach(cluster, [server, mac], False, connect_timeout=6.0, outside_grace=0.5)
    took = time.monotonic() - started
    assert took < 3.0, took  # not the 6 s banner timeout
    assert [r.node.name for r in reports] == ["s1", "macmini"]
    assert "cannot connect to 127.0.0.1" in reports[0].failure.reason
    late = reports[1].failure
    assert late.kind == "unreachable" and "no answer from 127.0.0.2" in late.reason and "piml status" in late.fix
    checks = preflight(reports, PimlConfig(), ha=False)
    assert [(c.name, c.status) for c in checks if c.node == "macmini"] == [("reach", "warn")]

    # `piml status` (no grace) waits for every node, the silent one up to its connect timeout
    started = time.monotonic()
    reports = reach(cluster, [server, mac], False, connect_timeout=2.0)
    assert time.monotonic() - started >= 1.5
    assert reports[1].failure is not None and "of the k3s nodes" not in reports[1].failure.reason  # its own failure


def test_piml_up_preflight_does_not_wait_for_or_fail_on_a_silent_ray_external_host(tmp_path, silent, refused):
    """As a user runs it: the k3s node refuses (a failure: exit 1), the ray_external host is silent (a warning),
    and the command is over well before the 10 s SSH timeouts, also at exit (no thread left to wait for)."""
    root = tmp_path / "rack"
    (root / "inventory").mkdir(parents=True)
    (root / ".piml").mkdir(mode=0o700)
    (root / "piml.yaml").write_text("")
    (root / "inventory/hosts.yml").write_text(
        yaml.safe_dump(
            {
                "k3s_cluster": {
                    "children": {"server": {"hosts": {"s1": {"ansible_host": "127.0.0.1", "ansible_port": refused}}}},
                    "vars": {"ansible_user": "pi"},
                },
                "ray_external": {
                    "hosts": {"macmini": {"ansible_host": "127.0.0.2", "ansible_port": silent, "piml_arch": "arm64"}},
                    "vars": {"ansible_user": "pi"},
                },
            }
        )
    )
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "piml", "up", "--only", "preflight", "--json"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    took = time.monotonic() - started
    rows = json.loads(out.stdout)["stages"]["preflight"]
    by = {(r["node"], r["check"]): r for r in rows}
    assert by["s1", "reach"]["status"] == "fail" and out.returncode == 1  # a k3s node still stops it
    assert by["macmini", "reach"]["status"] == "warn" and "asleep" in by["macmini", "reach"]["detail"]
    assert [r["check"] for r in rows if r["node"] == "macmini"] == ["reach"]
    assert took < 8.0, took
    assert "Traceback" not in out.stderr, out.stderr
