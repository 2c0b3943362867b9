"""piml upgrade --k3s against real test nodes: one server and two agents installed by `piml up` with the k3s
stand-in at v1.36.3+k3s1, then moved to a second build of the stand-in that reports v1.37.0+k3s1 (each node
reports the version of the binary it runs, as kubelets do). The playbooks, SSH, systemd and the install
script's interface are real; what a drain evicts is not (the stand-in runs no pods, see its README; the real
kubectl drains real pods, as drain.yml renders it, in tests/platform/test_drain.py)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tests.k3s.helpers import STANDIN, cluster_nodes, make_scenario

pytestmark = pytest.mark.nodes

OLD, NEW = "v1.36.3+k3s1", "v1.37.0+k3s1"
FAIL_START = "/etc/rancher/k3s/standin-fail-start"


def version_of(node: dict) -> str:
    return node["status"]["nodeInfo"]["kubeletVersion"]


def started_at(sub, node) -> int:
    unit = "k3s" if "srv" in node.name else "k3s-agent"
    text = sub.run(node, f"systemctl show -p ActiveEnterTimestampMonotonic --value {unit}").stdout.strip()
    # the nodes are containers on one host: their monotonic clocks are the host's, so they compare
    return int(text or 0)


def test_rolling_upgrade_stops_at_a_failing_node_and_resumes(node_factory, piml, tmp_path):
    sub = node_factory.substrate
    nodes = node_factory(3, names=["u1srv", "u1ag1", "u1ag2"])
    try:
        server, agent1, agent2 = nodes
        sc = make_scenario(piml, tmp_path, nodes)
        settings = sc.root / "piml.yaml"
        settings.write_text("# our lab's settings: kept by piml upgrade\n" + settings.read_text())
        # a node whose k3s never starts fails its bounded Ready wait (a `failed_when: false` there let a
        # wait whose retries ran out pass: this found it), and the others finish
        sub.run(agent2, f"mkdir -p /etc/rancher/k3s && touch {FAIL_START}")
        out, data = sc.up("--accept-new-host-keys")
        assert out.returncode == 1 and "u1ag2" in data["failed"], sc.failure(out, data)
        assert "did not become Ready" in data["failed"]["u1ag2"], sc.failure(out, data)
        sub.run(agent2, f"rm {FAIL_START}")
        out, data = sc.up()
        assert out.returncode == 0, sc.failure(out, data)
        assert {version_of(n) for n in cluster_nodes(sub, server).values()} == {OLD}

        # the plan, in order: servers one at a time, then agents (--max-unavailable at a time)
        out = sc.piml("upgrade", "--k3s", NEW, "--dry-run")
        assert out.returncode == 0, out.stderr
        steps = re.findall(r"^\s+(\d+)\. (\S+) \(v1\.36\.3\+k3s1\): cordon, drain", out.stdout, re.M)
        assert steps == [("1", "u1srv"), ("2", "u1ag1"), ("3", "u1ag2")], out.stdout
        out = sc.piml("upgrade", "--k3s", NEW, "--dry-run", "--max-unavailable", "2", "--json")
        assert json.loads(out.stdout)["order"] == [["u1srv"], ["u1ag1", "u1ag2"]]

        # refused before anything changes: a skipped minor, a downgrade, an air-gap dir without the new release
        for version, said in (("v1.38.0+k3s1", "skips minor versions"), ("v1.35.9+k3s1", "does not downgrade"),
                              (NEW, "is not k3s v1.37.0+k3s1"), ("1.37", "is not a k3s release")):  # fmt: skip
            out = sc.piml("upgrade", "--k3s", version)
            assert out.returncode == 2 and said in out.stderr, (version, out.stderr)
            assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert not (sc.root / "backups").exists()
        assert {version_of(n) for n in cluster_nodes(sub, server).values()} == {OLD}

        # the new release in the air-gap dir; the second agent's new k3s will not start
        airgap = tmp_path / "airgap"
        (airgap / "k3s").write_text((STANDIN / "k3s").read_text().replace(f'VERSION = "{OLD}"', f'VERSION = "{NEW}"'))
        sub.run(agent2, f"touch {FAIL_START}")
        out = sc.piml("upgrade", "--k3s", NEW, timeout=900)
        assert out.returncode == 1, out.stdout + out.stderr
        assert "Traceback" not in out.stdout + out.stderr
        assert "u1ag2" in out.stderr and f"piml upgrade --k3s {NEW}" in out.stderr, out.stderr
        listed = cluster_nodes(sub, server)
        assert {name: version_of(n) for name, n in listed.items()} == {"u1srv": NEW, "u1ag1": NEW, "u1ag2": OLD}
        # the done ones are back in service; the failed one stays cordoned, for a person to look at
        assert not listed["u1srv"]["spec"].get("unschedulable") and not listed["u1ag1"]["spec"].get("unschedulable")
        assert listed["u1ag2"]["spec"].get("unschedulable") is True, out.stdout + out.stderr
        assert "did not report kubelet v1.37.0+k3s1" in out.stderr, out.stderr
        assert started_at(sub, server) < started_at(sub, agent1)  # servers first
        assert f"version: {OLD}" not in settings.read_text() and NEW not in settings.read_text()  # pin not moved

        # piml up with the old pin now would take the finished nodes back: it refuses, on the first server
        out, data = sc.up()
        assert out.returncode == 1 and "does not downgrade" in data["failed"].get("u1srv", ""), sc.failure(out, data)
        assert version_of(cluster_nodes(sub, server)["u1srv"]) == NEW

        # the backup came first: the datastore (the single server's SQLite state.db) and the project
        archives = sorted((sc.root / "backups").glob("piml-backup-*.tar.gz"))
        assert len(archives) == 1 and (archives[0].stat().st_mode & 0o777) == 0o600
        listing = subprocess.run(["tar", "-tzf", str(archives[0])], capture_output=True, text=True).stdout.split()
        assert {"manifest.json", "project.tar", "k3s.tar"} <= set(listing), listing

        # fixed, then the same command resumes: only the second agent changes, and the pin moves
        sub.run(agent2, f"rm -f {FAIL_START}")
        out = sc.piml("upgrade", "--k3s", NEW, "--json", "--no-backup", timeout=900)
        assert out.returncode == 0, out.stdout + out.stderr
        data = json.loads(out.stdout)
        # its k3s may be back already (systemd restarts it every 5 s): then it is only uncordoned
        assert data["order"] in ([["u1ag2"]], []) and data["ok"], data
        changed = {host: stats["changed"] for host, stats in data["upgrade"]["hosts"].items()}
        assert changed["u1srv"] == 0 and changed["u1ag1"] == 0 and changed["u1ag2"] > 0, changed
        listed = cluster_nodes(sub, server)
        assert {version_of(n) for n in listed.values()} == {NEW}
        assert not any(n["spec"].get("unschedulable") for n in listed.values())
        text = settings.read_text()
        assert text.startswith("# our lab's settings: kept by piml upgrade\n")
        assert yaml.safe_load(text)["k3s"]["version"] == NEW and yaml.safe_load(text)["k3s"]["wait_timeout"] == 60

        # nothing left to do; and piml up now installs what the cluster runs (no downgrade)
        out = sc.piml("upgrade", "--k3s", NEW, "--dry-run")
        assert "every node runs v1.37.0+k3s1 already" in out.stdout, out.stdout
        out, data = sc.up()
        assert out.returncode == 0, sc.failure(out, data)
        assert all(stats["changed"] == 0 for stats in data["stages"]["k3s"]["hosts"].values())
    finally:
        node_factory.destroy(nodes)
