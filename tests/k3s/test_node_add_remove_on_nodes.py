"""piml node add / piml node remove against real test nodes with the k3s stand-in: a board joins (inventory edited
with its comments kept, preflight, prepare, k3s), then leaves (drained, deleted from the cluster, k3s uninstalled,
out of the inventory). The stand-in has no storage, so the volume refusal is tested in test_node_commands.py."""

from __future__ import annotations

import time

import pytest
import yaml

from tests.k3s.helpers import cluster_nodes, is_ready, make_scenario

pytestmark = pytest.mark.nodes


def until(what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(2)


def test_a_board_joins_and_leaves(node_factory, piml, tmp_path):
    sub = node_factory.substrate
    nodes = node_factory(3, names=["n1srv", "n1ag1", "n1ag2"])
    try:
        server, agent1, newcomer = nodes
        sc = make_scenario(piml, tmp_path, [server, agent1])
        hosts = sc.root / "inventory/hosts.yml"
        hosts.write_text(hosts.read_text().replace("k3s_cluster:\n", "# rack A, shelf 2\nk3s_cluster:\n", 1))
        out, data = sc.up("--accept-new-host-keys")
        assert out.returncode == 0, sc.failure(out, data)

        out = sc.piml("node", "add", f"n1ag2={newcomer.address}", "--accept-new-host-keys", "--until", "kubeconfig")
        assert out.returncode == 0, out.stdout + out.stderr
        inventory = yaml.safe_load(hosts.read_text())
        assert inventory["k3s_cluster"]["children"]["agent"]["hosts"]["n1ag2"] == {"ansible_host": newcomer.address}
        assert "# rack A, shelf 2\n" in hosts.read_text()
        listed = cluster_nodes(sub, server)
        assert set(listed) == {"n1srv", "n1ag1", "n1ag2"} and is_ready(listed["n1ag2"])
        out = sc.piml("node", "add", f"n1ag2={newcomer.address}")
        assert out.returncode == 2 and "in the inventory already" in out.stderr, out.stderr

        # refused, nothing changed: the only server; a name the inventory does not have
        for name, said in (("n1srv", "is the only server"), ("n9", "is no k3s node")):
            out = sc.piml("node", "remove", name, "--yes")
            assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert set(cluster_nodes(sub, server)) == {"n1srv", "n1ag1", "n1ag2"}

        out = sc.piml("node", "remove", "n1ag2", "--yes")
        assert out.returncode == 0, out.stdout + out.stderr
        assert set(cluster_nodes(sub, server)) == {"n1srv", "n1ag1"}
        assert sub.run(newcomer, "test -e /usr/local/bin/k3s && echo left || echo gone").stdout.strip() == "gone"
        text = hosts.read_text()
        assert "n1ag2" not in text and "# rack A, shelf 2\n" in text
        assert set(yaml.safe_load(text)["k3s_cluster"]["children"]["agent"]["hosts"]) == {"n1ag1"}

        # the last agent is a dead board: unplugged, NotReady. Its pods never confirm their end, and kubectl drain
        # would wait for them until its timeout (the stand-in plays that wait); piml stops waiting 20 s after their
        # grace period, deletes the node and says k3s is left on the board. The group is left as piml init writes it.
        sub.stop(agent1, hard=True)
        until("n1ag1 NotReady", lambda: not is_ready(cluster_nodes(sub, server)["n1ag1"]), 90)
        out = sc.piml("node", "remove", "n1ag1", "--yes", timeout=400)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "n1ag1: taken out of the cluster, but k3s is still on the board" in out.stdout, out.stdout
        assert "      hosts: {}\n" in hosts.read_text()
        assert set(cluster_nodes(sub, server)) == {"n1srv"}
    finally:
        node_factory.destroy(nodes)
