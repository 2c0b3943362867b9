"""Fixtures for the per-node health checks (piml.health.nodes) on real test nodes (tests/nodes).

The nodes have no k3s (it cannot be had offline): each gets a STAND-IN systemd unit with k3s's unit name.
The server's stand-in listens on 6443 with `python3 -m http.server`; the agent's only sleeps. They prove
the checks read systemd and the listening sockets, not that k3s works. `vcgencmd` is the node image's
stand-in (/usr/bin/vcgencmd, answering what `Substrate.set_throttled` wrote).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from piml.health.nodes import node_checks
from piml.project import ProjectPaths, load_cluster

STANDIN_UNIT = """\
[Unit]
Description=TEST STAND-IN for {unit} (piml tests/nodechecks): {what}; runs no Kubernetes

[Service]
ExecStart={command}

[Install]
WantedBy=multi-user.target
"""
SERVER_STANDIN = "/usr/bin/python3 -m http.server 6443 --bind 0.0.0.0"
AGENT_STANDIN = "/bin/sleep infinity"


def piml(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "piml", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def install_standin(sub, node, server: bool) -> None:
    """A k3s (server) or k3s-agent stand-in unit, enabled and started."""
    unit = "k3s" if server else "k3s-agent"
    text = STANDIN_UNIT.format(
        unit=unit,
        what="listens on 6443" if server else "only sleeps",
        command=SERVER_STANDIN if server else AGENT_STANDIN,
    )
    sub.run(
        node,
        f"cat > /etc/systemd/system/{unit}.service && systemctl daemon-reload && systemctl enable --now {unit}",
        input=text,
    )
    if server:
        wait_api_port(sub, node)


def wait_api_port(sub, node) -> None:
    """Until the stand-in has bound 6443 (systemd starts it before it listens); at most 10 s."""
    sub.run(node, "for i in $(seq 100); do ss -Hltn 'sport = :6443' | grep -q . && exit 0; sleep 0.1; done; exit 1")


def make_project(root: Path, nodes_and_roles, record_keys: bool = True) -> Path:
    """`piml init` with these nodes; with record_keys, a preflight with --accept-new-host-keys records their
    host keys in .piml/known_hosts (piml's own writer: the checks must read what it writes)."""
    (first, _), *_ = nodes_and_roles
    args = ["init", "rack", "--ssh-key", first.key_path]
    for node, role in nodes_and_roles:
        args += ["--node", f"{node.name}={node.address}:{role}"]
    out = piml(*args, cwd=root)
    assert out.returncode == 0, out.stderr
    project = root / "rack"
    if record_keys:
        out = piml("up", "--only", "preflight", "--json", "--accept-new-host-keys", cwd=project)
        rows = json.loads(out.stdout)["stages"]["preflight"]
        assert all(r["status"] == "pass" for r in rows if r["check"] == "reach"), rows
        known = (project / ".piml/known_hosts").read_text()
        assert all(node.address in known for node, _ in nodes_and_roles), known
    return project


def check(project: Path, timeout: float = 20.0):
    """node_checks over every inventory node: {(node, check): Result}, and the rows in order."""
    cluster = load_cluster(ProjectPaths.resolve(project, None))
    rows = node_checks(cluster, cluster.inventory.nodes, timeout=timeout)
    return {(r.target, r.check): r for r in rows}, rows


@dataclass
class Rack:
    """A server and an agent with stand-in k3s units, their project, and the substrate's fault helpers."""

    project: Path
    server: object  # tests.nodes.substrate.Node
    agent: object
    sub: object

    def check(self, timeout: float = 20.0):
        return check(self.project, timeout)

    def check_broken(self, node, fault: str, repair: str):
        """check() while `node` has `fault` (a shell command run as root), then `repair` it, also when
        check() fails; on the server, until the stand-in listens on 6443 again."""
        self.sub.run(node, fault)
        try:
            return self.check()
        finally:
            self.sub.run(node, repair)
            if node is self.server:
                wait_api_port(self.sub, node)


@pytest.fixture(scope="module")
def rack(node_factory, tmp_path_factory):
    """Two fresh nodes for one test module. Tests that change a node put it back (try/finally)."""
    server, agent = node_factory(2)
    sub = node_factory.substrate
    try:
        install_standin(sub, server, server=True)
        install_standin(sub, agent, server=False)
        project = make_project(tmp_path_factory.mktemp("nodechecks"), [(server, "server"), (agent, "agent")])
        yield Rack(project, server, agent, sub)
    finally:
        node_factory.destroy([server, agent])
