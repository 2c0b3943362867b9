"""Preflight and status over real SSH to real test nodes (systemd-nspawn machines)."""

import json
import os
import stat
import subprocess
import time

import pytest

pytestmark = pytest.mark.nodes


def make_project(piml, tmp_path, nodes, key=None, name="rack"):
    args = ["init", name, "--ssh-key", key or nodes[0].key_path]  # no --model: test nodes are x86
    for index, node in enumerate(nodes):
        args += ["--node", f"{node.name}={node.address}" + (":server" if index == 0 else "")]
    out = piml(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return tmp_path / name


def preflight(piml, project, *extra):
    out = piml("up", "--only", "preflight", "--json", *extra, cwd=project)
    assert "Traceback" not in out.stderr + out.stdout
    return out, json.loads(out.stdout)["stages"]["preflight"] if out.stdout.strip() else []


def by_check(rows, node, check):
    row = next((r for r in rows if r["node"] == node and r["check"] == check), None)
    assert row is not None, f"no {check!r} row for {node}; rows: {rows}"
    return row


def statuses(rows, check, *nodes):
    """{node: status} for one check, so a failed comparison shows every node's row."""
    return {n.name: by_check(rows, n.name, check)["status"] for n in nodes}


def test_preflight_on_three_nodes_passes_and_records_host_keys(piml, tmp_path, three_nodes):
    project = make_project(piml, tmp_path, three_nodes)
    out, rows = preflight(piml, project, "--accept-new-host-keys")
    assert out.returncode == 0, out.stdout + out.stderr
    for node in three_nodes:
        assert by_check(rows, node.name, "reach")["status"] == "pass"
        assert by_check(rows, node.name, "sudo")["detail"] == "passwordless sudo"
        assert by_check(rows, node.name, "memory cgroup")["status"] == "pass"
    known = project / ".piml/known_hosts"
    assert stat.S_IMODE(os.stat(known).st_mode) == 0o600
    assert len([line for line in known.read_text().splitlines() if line]) >= 3
    # Keys now known: no flag needed any more.
    assert preflight(piml, project)[0].returncode == 0


def test_unknown_host_keys_are_refused_without_the_flag(piml, tmp_path, three_nodes):
    project = make_project(piml, tmp_path, three_nodes)
    out, rows = preflight(piml, project)
    assert out.returncode == 1
    for node in three_nodes:
        row = by_check(rows, node.name, "reach")
        assert (
            row["status"] == "fail" and "is not yet known" in row["detail"] and "--accept-new-host-keys" in row["fix"]
        )
    assert not (project / ".piml/known_hosts").exists()


def test_status_lists_every_node(piml, tmp_path, three_nodes):
    project = make_project(piml, tmp_path, three_nodes)
    out = piml("status", "--json", "--accept-new-host-keys", cwd=project)
    assert out.returncode == 0, out.stderr
    nodes = json.loads(out.stdout)["nodes"]
    assert [n["name"] for n in nodes] == [n.name for n in three_nodes]
    for n in nodes:
        assert n["reachable"] and n["healthy"]
        assert n["model"] == "pi5" and n["model_raw"].startswith("Raspberry Pi 5")
        assert n["arch"] in ("amd64", "arm64") and n["memory_mb"] > 0 and n["temperature_c"] == pytest.approx(48.312)
        assert n["throttled"] == {"raw": "0x0", "now": [], "since_boot": []} and n["k3s"] == "not installed"
    table = piml("status", cwd=project).stdout
    assert all(node.name in table for node in three_nodes)


def test_stopped_node_is_one_error_and_the_others_are_reported(piml, tmp_path, node_factory):
    a, b, c = node_factory.trio()
    project = make_project(piml, tmp_path, [a, b, c])
    assert preflight(piml, project, "--accept-new-host-keys")[0].returncode == 0
    node_factory.substrate.stop(b)
    started = time.monotonic()
    out, rows = preflight(piml, project)
    assert time.monotonic() - started < 30  # bounded connect timeout, not a hang
    assert out.returncode == 1
    assert by_check(rows, b.name, "reach")["status"] == "fail"
    assert [r["check"] for r in rows if r["node"] == b.name] == ["reach"]
    assert statuses(rows, "reach", a, c) == {a.name: "pass", c.name: "pass"}, rows
    status = json.loads(piml("status", "--json", cwd=project).stdout)["nodes"]
    assert [(n["name"], n["reachable"]) for n in status] == [(a.name, True), (b.name, False), (c.name, True)]
    assert b.name in status[1]["error"]


def test_cut_link_is_reported_within_the_timeout(piml, tmp_path, node_factory):
    a, b, c = node_factory.trio()
    project = make_project(piml, tmp_path, [a, b, c])
    assert preflight(piml, project, "--accept-new-host-keys")[0].returncode == 0
    node_factory.substrate.cut_link(c)
    out = piml("status", "--json", cwd=project)
    assert out.returncode == 1
    nodes = {n["name"]: n for n in json.loads(out.stdout)["nodes"]}
    assert not nodes[c.name]["reachable"] and nodes[a.name]["reachable"] and nodes[b.name]["reachable"]


def _accepted_logins(substrate, node) -> int:
    log = substrate.run(node, "journalctl -u ssh --no-pager -o cat", check=False).stdout
    return log.count("Accepted publickey")


def test_changed_host_key_is_refused_and_nothing_runs(piml, tmp_path, node_factory):
    a, b, c = node_factory.trio()
    project = make_project(piml, tmp_path, [a, b, c])
    assert preflight(piml, project, "--accept-new-host-keys")[0].returncode == 0
    old = b.host_key_fingerprint
    new = node_factory.substrate.new_host_key(b)
    logins_before = _accepted_logins(node_factory.substrate, b)
    for flag in ((), ("--accept-new-host-keys",)):  # the flag never accepts a CHANGED key
        out, rows = preflight(piml, project, *flag)
        assert out.returncode == 1
        row = by_check(rows, b.name, "reach")
        assert "HOST KEY CHANGED" in row["detail"] and old in row["detail"] and new in row["detail"]
        assert by_check(rows, a.name, "reach")["status"] == "pass"
    assert _accepted_logins(node_factory.substrate, b) == logins_before  # we never logged in


def test_wrong_key_file_names_the_node(piml, tmp_path, three_nodes):
    other_key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True, timeout=30)
    project = make_project(piml, tmp_path, three_nodes)
    hosts = project / "inventory/hosts.yml"
    a, b, c = three_nodes
    hosts.write_text(
        hosts.read_text().replace(
            f"ansible_host: {b.address}\n",
            f"ansible_host: {b.address}\n          ansible_ssh_private_key_file: {other_key}\n",
        )
    )
    out, rows = preflight(piml, project, "--accept-new-host-keys")
    assert out.returncode == 1
    row = by_check(rows, b.name, "reach")
    assert row["status"] == "fail" and "refused our login" in row["detail"] and str(other_key) in row["detail"]
    assert statuses(rows, "reach", a, c) == {a.name: "pass", c.name: "pass"}, rows


def test_sudo_wanting_a_password_fails_that_node_only(piml, tmp_path, node_factory):
    a, b, c = node_factory.trio()
    node_factory.substrate.require_sudo_password(c)
    project = make_project(piml, tmp_path, [a, b, c])
    out, rows = preflight(piml, project, "--accept-new-host-keys")
    assert out.returncode == 1
    row = by_check(rows, c.name, "sudo")
    assert row["status"] == "fail" and "password" in row["detail"] and "NOPASSWD" in row["fix"]
    assert statuses(rows, "sudo", a, b) == {a.name: "pass", b.name: "pass"}, rows


def test_duplicate_hostnames_and_throttling(piml, tmp_path, node_factory):
    nodes = node_factory(2, hostname="raspberrypi")
    project = make_project(piml, tmp_path, nodes, name="dup")
    out, rows = preflight(piml, project, "--accept-new-host-keys")
    row = by_check(rows, "cluster", "hostnames")
    assert row["status"] == "warn" and "'raspberrypi'" in row["detail"] and all(n.name in row["detail"] for n in nodes)
    node_factory.substrate.set_throttled(nodes[1], "0x50005")
    out = piml("status", "--json", cwd=project)
    assert out.returncode == 1
    sick = json.loads(out.stdout)["nodes"][1]
    assert sick["throttled"]["now"] == ["under_voltage", "throttled"] and not sick["healthy"]
    node_factory.destroy(nodes)


def test_limit(piml, tmp_path, three_nodes):
    project = make_project(piml, tmp_path, three_nodes)
    out = piml("status", "--json", "--accept-new-host-keys", "--limit", f"{three_nodes[2].name},server", cwd=project)
    assert [n["name"] for n in json.loads(out.stdout)["nodes"]] == [three_nodes[0].name, three_nodes[2].name]
    bad = piml("status", "--limit", "nodez", cwd=project)
    assert bad.returncode == 2 and "no node or group named 'nodez'" in bad.stderr


def test_watch_refreshes_in_place_until_ctrl_c(piml, tmp_path, three_nodes):
    import pty
    import select
    import signal
    import sys

    project = make_project(piml, tmp_path, three_nodes)
    assert piml("status", "--accept-new-host-keys", cwd=project).returncode == 0
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "piml", "status", "--watch", "--interval", "1"],
        cwd=project,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env={**os.environ, "COLUMNS": "150"},
    )
    os.close(follower)
    screen = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and screen.count(b"nodes (") < 3:  # three renders of the table
        if select.select([leader], [], [], 0.5)[0]:
            try:
                screen += os.read(leader, 65536)
            except OSError:
                break
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 0  # all healthy, stopped by Ctrl-C, no traceback
    os.close(leader)
    assert screen.count(b"nodes (") >= 3 and b"\x1b[" in screen  # redrawn with cursor movement
    assert b"Traceback" not in screen and all(n.name.encode() in screen for n in three_nodes)


def test_asleep_ray_external_host_is_a_warning_and_preflight_goes_on(piml, tmp_path, node_factory):
    """A ray_external host (a Mac mini joining Ray, outside Kubernetes) that is off: a warning on its own row;
    the k3s nodes pass and `piml up` is not stopped (exit 0), nor held up by its connect timeout."""
    a, b, mac = node_factory.trio()
    args = [
        "init",
        "rack",
        "--ssh-key",
        a.key_path,
        "--node",
        f"{a.name}={a.address}:server",
        "--node",
        f"{b.name}={b.address}",
        "--node",
        f"{mac.name}={mac.address}:external",
    ]
    assert piml(*args, cwd=tmp_path).returncode == 0
    project = tmp_path / "rack"
    out, rows = preflight(piml, project, "--accept-new-host-keys")
    assert out.returncode == 0, out.stdout + out.stderr
    assert by_check(rows, mac.name, "reach")["status"] == "pass"  # awake: reached and checked like the others
    node_factory.substrate.stop(mac, hard=True)
    started = time.monotonic()
    out, rows = preflight(piml, project)
    took = time.monotonic() - started
    assert out.returncode == 0, out.stdout + out.stderr
    assert [(r["check"], r["status"]) for r in rows if r["node"] == mac.name] == [("reach", "warn")]
    assert "piml up goes on without it" in by_check(rows, mac.name, "reach")["detail"]
    assert statuses(rows, "reach", a, b) == {a.name: "pass", b.name: "pass"}, rows
    assert "fail" not in {r["status"] for r in rows}, rows
    assert took < 10, took  # not the 10 s connect timeout on top of the k3s nodes' time
