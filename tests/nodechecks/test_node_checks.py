"""piml.health.nodes over real SSH to real test nodes, with stand-in k3s units (see conftest.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.nodechecks.conftest import check, install_standin, make_project

pytestmark = pytest.mark.nodes

SERVER_CHECKS = ["reach", "k3s service", "api port", "memory cgroup", "throttling"]
AGENT_CHECKS = ["reach", "k3s service", "memory cgroup", "throttling"]


def statuses(rows, node) -> dict[str, str]:
    return {r.check: r.status for r in rows if r.target == node.name}


def accepted_logins(sub, node) -> int:
    return sub.run(node, "journalctl -u ssh --no-pager -o cat", check=False).stdout.count("Accepted publickey")


def test_healthy_server_and_agent_pass(rack):
    by, rows = rack.check()
    assert [r.check for r in rows if r.target == rack.server.name] == SERVER_CHECKS
    assert [r.check for r in rows if r.target == rack.agent.name] == AGENT_CHECKS  # no api port on agents
    assert all(r.status == "pass" and r.group == "nodes" for r in rows), rows
    assert by[rack.server.name, "k3s service"].detail == "k3s running and enabled"
    assert by[rack.agent.name, "k3s service"].detail == "k3s-agent running and enabled"
    assert "6443 listening on 0.0.0.0" == by[rack.server.name, "api port"].detail
    assert by[rack.server.name, "throttling"].detail == "0x0: not throttled now"
    assert "ssh as pi" in by[rack.server.name, "reach"].detail


def test_reuses_one_connection_per_node(rack):
    """All of a node's checks come from one SSH login (one facts round trip), not one login per command."""
    logins = accepted_logins(rack.sub, rack.server)
    rack.check()
    assert accepted_logins(rack.sub, rack.server) == logins + 1


def test_k3s_stopped_fails_that_node_only(rack):
    by, rows = rack.check_broken(rack.server, "systemctl stop k3s", "systemctl start k3s")
    row = by[rack.server.name, "k3s service"]
    assert row.status == "fail" and "k3s not running (inactive/dead)" in row.detail, row
    assert "journalctl -u k3s" in row.fix and "systemctl enable --now k3s" in row.fix
    assert by[rack.server.name, "api port"].status == "fail"
    assert set(statuses(rows, rack.agent).values()) == {"pass"}, rows


def test_disabled_service_fails(rack):
    by, rows = rack.check_broken(rack.agent, "systemctl disable k3s-agent", "systemctl enable k3s-agent")
    row = by[rack.agent.name, "k3s service"]
    assert row.status == "fail" and "not enabled (disabled)" in row.detail and "not running" not in row.detail, row
    assert row.fix == "on the node: sudo systemctl enable k3s-agent"
    assert set(statuses(rows, rack.server).values()) == {"pass"}, rows


def test_missing_unit_says_k3s_is_not_installed(rack):
    by, _ = rack.check_broken(
        rack.agent,
        "systemctl disable --now k3s-agent && mv /etc/systemd/system/k3s-agent.service /root/ && systemctl daemon-reload",
        "mv /root/k3s-agent.service /etc/systemd/system/ && systemctl daemon-reload && systemctl enable --now k3s-agent",
    )
    row = by[rack.agent.name, "k3s service"]
    assert row.status == "fail" and "not installed" in row.detail and "piml up --only k3s" in row.fix, row


def test_api_port_not_listening_fails(rack):
    # The stand-in keeps running but listens nowhere.
    by, _ = rack.check_broken(
        rack.server,
        "mkdir -p /run/systemd/system/k3s.service.d && printf '[Service]\\nExecStart=\\nExecStart=/bin/sleep infinity\\n'"
        " > /run/systemd/system/k3s.service.d/no-listen.conf && systemctl daemon-reload && systemctl restart k3s",
        "rm -r /run/systemd/system/k3s.service.d && systemctl daemon-reload && systemctl restart k3s",
    )
    assert by[rack.server.name, "k3s service"].status == "pass"
    row = by[rack.server.name, "api port"]
    assert row.status == "fail" and "nothing listens on TCP 6443" in row.detail, row


def test_throttled_now_fails_naming_the_reasons(rack):
    rack.sub.set_throttled(rack.server, "0x50005")
    rack.sub.set_throttled(rack.agent, "0x50000")  # only "since boot": not a failure
    try:
        by, _ = rack.check()
    finally:
        rack.sub.set_throttled(rack.server, "0x0")
        rack.sub.set_throttled(rack.agent, "0x0")
    row = by[rack.server.name, "throttling"]
    assert row.status == "fail" and row.detail == "0x50005: now under-voltage, throttled", row
    assert "power supply" in row.fix
    row = by[rack.agent.name, "throttling"]
    assert row.status == "pass" and "since boot: under-voltage, throttled" in row.detail, row


def test_no_vcgencmd_is_a_skip(rack):
    by, _ = rack.check_broken(
        rack.agent, "mv /usr/bin/vcgencmd /usr/bin/vcgencmd.away", "mv /usr/bin/vcgencmd.away /usr/bin/vcgencmd"
    )
    row = by[rack.agent.name, "throttling"]
    assert (row.status, row.detail) == ("skip", "no vcgencmd: not a Raspberry Pi OS node")
    assert by[rack.server.name, "throttling"].status == "pass"


def test_a_hanging_command_is_cut_at_the_timeout(rack):
    # A vcgencmd that never answers (like a wedged firmware mailbox), ahead of the image's in PATH.
    rack.sub.run(
        rack.server, "printf '#!/bin/sh\\nsleep 30\\n' > /usr/local/bin/vcgencmd && chmod 755 /usr/local/bin/vcgencmd"
    )
    try:
        started = time.monotonic()
        by, rows = rack.check(timeout=4)
        elapsed = time.monotonic() - started
    finally:
        rack.sub.run(rack.server, "rm -f /usr/local/bin/vcgencmd")
    assert elapsed < 4 + 3, elapsed
    row = by[rack.server.name, "throttling"]
    assert row.status == "fail" and row.detail == "no answer within 4 s", row
    # what the node had answered before the hang is still checked
    assert {c: s for c, s in statuses(rows, rack.server).items() if c != "throttling"} == dict.fromkeys(
        ["reach", "k3s service", "api port", "memory cgroup"], "pass"
    ), rows
    assert set(statuses(rows, rack.agent).values()) == {"pass"}, rows


def test_unknown_host_keys_are_refused_and_nothing_runs(rack, tmp_path):
    project = make_project(tmp_path, [(rack.server, "server"), (rack.agent, "agent")], record_keys=False)
    logins = accepted_logins(rack.sub, rack.server)
    by, rows = check(project)
    for node in (rack.server, rack.agent):
        assert [r.check for r in rows if r.target == node.name] == ["reach"]
        row = by[node.name, "reach"]
        assert row.status == "fail" and "not yet known" in row.detail, row
        assert "piml up --only preflight --accept-new-host-keys" in row.fix
    assert accepted_logins(rack.sub, rack.server) == logins  # never logged in
    assert not (project / ".piml/known_hosts").exists()  # and recorded nothing


def test_a_host_missing_from_known_hosts_is_refused(rack, tmp_path):
    """Only the project's known_hosts counts: the agent's line removed, the agent fails, the server passes."""
    project = make_project(tmp_path, [(rack.server, "server"), (rack.agent, "agent")])
    known = project / ".piml/known_hosts"
    known.write_text(
        "".join(line for line in known.read_text().splitlines(keepends=True) if rack.agent.address not in line)
    )
    by, rows = check(project)
    assert [r.check for r in rows if r.target == rack.agent.name] == ["reach"]
    assert "not yet known" in by[rack.agent.name, "reach"].detail
    assert set(statuses(rows, rack.server).values()) == {"pass"}, rows
    assert rack.agent.address not in known.read_text()


def test_changed_host_key_is_refused(rack, tmp_path):
    project = make_project(tmp_path, [(rack.server, "server"), (rack.agent, "agent")])
    known = project / ".piml/known_hosts"
    # The server's entry now holds the agent's key: the server presents a key that does not match.
    agent_lines = [line for line in known.read_text().splitlines() if line.startswith(rack.agent.address + " ")]
    known.write_text(
        "".join(line.replace(rack.agent.address, rack.server.address, 1) + "\n" for line in agent_lines)
        + "".join(line + "\n" for line in agent_lines)
    )
    logins = accepted_logins(rack.sub, rack.server)
    by, rows = check(project)
    row = by[rack.server.name, "reach"]
    assert (
        row.status == "fail" and "HOST KEY CHANGED" in row.detail and rack.server.host_key_fingerprint in row.detail
    ), row
    assert f"'{rack.server.address}'" in row.fix
    assert [r.check for r in rows if r.target == rack.server.name] == ["reach"]
    assert accepted_logins(rack.sub, rack.server) == logins
    assert by[rack.agent.name, "reach"].status == "pass"


def test_ray_external_nodes_get_one_reachable_row_and_no_ssh_login(rack, tmp_path):
    project = make_project(tmp_path, [(rack.server, "server"), (rack.agent, "external")])
    logins = accepted_logins(rack.sub, rack.agent)
    by, rows = check(project)
    assert [(r.check, r.status) for r in rows if r.target == rack.agent.name] == [("reachable", "pass")]
    assert "ray_external" in by[rack.agent.name, "reachable"].detail  # its SSH port answers; no login
    assert accepted_logins(rack.sub, rack.agent) == logins
    assert set(statuses(rows, rack.server).values()) == {"pass"}, rows


def test_user_ssh_config_is_honoured_where_the_inventory_is_silent(rack, tmp_path, monkeypatch):
    """The inventory names the server by an alias that only ~/.ssh/config resolves (HostName)."""
    project = make_project(tmp_path, [(rack.server, "server"), (rack.agent, "agent")])
    hosts = project / "inventory/hosts.yml"
    hosts.write_text(hosts.read_text().replace(f"ansible_host: {rack.server.address}", "ansible_host: rack-api"))
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh/config").write_text(f"Host rack-api\n  HostName {rack.server.address}\n  User nobody-here\n")
    monkeypatch.setenv("HOME", str(home))
    by, rows = check(project)
    # HostName came from ~/.ssh/config; User did not: the inventory's ansible_user (pi) comes first.
    assert set(statuses(rows, rack.server).values()) == {"pass"}, rows
    assert "ssh as pi" in by[rack.server.name, "reach"].detail


def test_user_ssh_config_cannot_weaken_host_key_checking(rack, tmp_path, monkeypatch):
    project = make_project(tmp_path, [(rack.server, "server"), (rack.agent, "agent")], record_keys=False)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh/config").write_text("Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
    monkeypatch.setenv("HOME", str(home))
    by, _ = check(project)
    assert "not yet known" in by[rack.server.name, "reach"].detail
    assert "not yet known" in by[rack.agent.name, "reach"].detail


def test_vcgencmd_needing_root_runs_with_sudo(rack):
    # Like a user outside the video group: vcgencmd works only as root, so the check retries with `sudo -n`.
    wrapper = '#!/bin/sh\n[ "$(id -u)" = 0 ] || { echo "VCHI initialization failed" >&2; exit 1; }\nexec /usr/bin/vcgencmd "$@"\n'
    rack.sub.run(rack.agent, "cat > /usr/local/bin/vcgencmd && chmod 755 /usr/local/bin/vcgencmd", input=wrapper)
    try:
        with_sudo, _ = rack.check()
        rack.sub.require_sudo_password(rack.agent)
        try:
            without, _ = rack.check()
        finally:
            rack.sub.allow_sudo_nopasswd(rack.agent)
    finally:
        rack.sub.run(rack.agent, "rm -f /usr/local/bin/vcgencmd")
    assert with_sudo[rack.agent.name, "throttling"].status == "pass", with_sudo[rack.agent.name, "throttling"]
    row = without[rack.agent.name, "throttling"]
    assert (
        row.status == "fail"
        and row.detail
        == ("vcgencmd get_throttled failed: VCHI initialization failed (with sudo -n: sudo: a password is required)")
        and "video group" in row.fix
    ), row


def test_stopped_node_is_one_reach_row_within_the_timeout(node_factory, rack, tmp_path):
    (spare,) = node_factory(1)
    try:
        install_standin(node_factory.substrate, spare, server=False)
        project = make_project(tmp_path, [(rack.server, "server"), (spare, "agent")])
        node_factory.substrate.stop(spare, hard=True)
        started = time.monotonic()
        by, rows = check(project, timeout=6)
        elapsed = time.monotonic() - started
    finally:
        node_factory.destroy([spare])
    assert elapsed < 6 + 3, elapsed
    assert [r.check for r in rows if r.target == spare.name] == ["reach"]
    row = by[spare.name, "reach"]
    assert row.status == "fail" and spare.address in row.detail and row.fix, row
    assert set(statuses(rows, rack.server).values()) == {"pass"}, rows


def test_memory_cgroup_off_fails(rack):
    # The kernel's cgroup list as a node with the memory controller disabled sees it (bind-mounted in the
    # node's own mount namespace; nodes share the host's kernel, so this is the one way to switch it off).
    cgroups = rack.sub.run(rack.agent, "cat /proc/cgroups").stdout
    if "cgroup.controllers" in rack.sub.run(rack.agent, "ls /sys/fs/cgroup").stdout:
        pytest.skip("this machine's nodes use cgroup v2: the memory controller cannot be hidden per node")
    off = "".join(
        line.rsplit("\t", 1)[0] + "\t0\n" if line.startswith("memory\t") else line + "\n"
        for line in cgroups.splitlines()
    )
    rack.sub.run(rack.agent, "cat > /run/cgroups-off && mount --bind /run/cgroups-off /proc/cgroups", input=off)
    try:
        by, rows = rack.check()
    finally:
        rack.sub.run(rack.agent, "umount /proc/cgroups && rm /run/cgroups-off")
    row = by[rack.agent.name, "memory cgroup"]
    assert (
        row.status == "fail" and "memory cgroup off (cgroup v1)" in row.detail and "cgroup_enable=memory" in row.fix
    ), row
    assert by[rack.server.name, "memory cgroup"].status == "pass"


def test_nothing_to_check_is_no_rows(rack):
    from piml.health.nodes import node_checks
    from piml.project import ProjectPaths, load_cluster

    assert node_checks(load_cluster(ProjectPaths.resolve(Path(rack.project), None)), []) == []
