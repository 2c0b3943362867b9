"""piml.health.nodes' rows from facts outputs, without SSH: the captured outputs of tests/facts, cut short
and failed connections. The same rows on real nodes are in test_node_checks.py."""

from __future__ import annotations

from pathlib import Path

from piml.facts.commands import marker
from piml.health.nodes import _rows
from piml.inventory.model import Node, Role
from piml.ssh import results as R
from piml.ssh.results import CommandOutput, Failure, HostResult

CAPTURED = Path(__file__).parent.parent / "facts" / "captured"
KNOWN = Path("/project/.piml/known_hosts")


def node(role: Role = Role.SERVER) -> Node:
    return Node(name="pi1", address="10.0.0.11", role=role, user="pi")


def rows_of(output: str, role: Role = Role.SERVER, failure: Failure | None = None) -> dict[str, tuple[str, str, str]]:
    answer = HostResult("pi1", value=CommandOutput(0 if failure is None else -1, output, "", 0.2, 0.0), failure=failure)
    return {r.check: (r.status, r.detail, r.fix) for r in _rows(node(role), answer, KNOWN, 20.0)}


def test_healthy_k3s_server_over_ipv6():
    rows = rows_of((CAPTURED / "pi5-bookworm-nvme-6.6.txt").read_text())
    assert list(rows) == ["reach", "k3s service", "api port", "memory cgroup", "throttling"]
    assert {status for status, _, _ in rows.values()} == {"pass"}, rows
    assert rows["api port"][1] == "6443 listening on ::"
    assert rows["reach"][1] == "ssh as pi, host key known"
    assert rows["memory cgroup"][1] == "on (cgroup v2)"


def test_sd_node_without_k3s_memory_cgroup_off_and_throttled():
    rows = rows_of((CAPTURED / "pi5-bookworm-sd-6.12.txt").read_text(), Role.AGENT)
    assert list(rows) == ["reach", "k3s service", "memory cgroup", "throttling"]  # no api port on agents
    assert rows["k3s service"] == (
        "fail",
        "no k3s-agent.service: k3s is not installed",
        "install it: piml up --only k3s",
    )
    assert rows["memory cgroup"][:2] == (
        "fail",
        "memory cgroup off (cgroup v2): k3s fails with 'failed to find memory cgroup'",
    )
    assert rows["throttling"][:2] == ("fail", "0x50005: now under-voltage, throttled")


def test_no_vcgencmd_is_a_skip_and_no_systemd_is_said():
    rows = rows_of((CAPTURED / "container-node.txt").read_text(), Role.AGENT)
    assert rows["throttling"] == ("skip", "no vcgencmd: not a Raspberry Pi OS node", "")
    assert rows["k3s service"][0] == "fail" and "no systemctl" in rows["k3s service"][1]


def test_service_states():
    base = (CAPTURED / "x86-debian-server.txt").read_text()

    def service(lines: str) -> tuple[str, str, str]:
        text = base.replace("ActiveState=active\nSubState=running\nUnitFileState=enabled\n", lines)
        return rows_of(text)["k3s service"]

    assert service("ActiveState=inactive\nSubState=dead\nUnitFileState=enabled\n")[:2] == (
        "fail",
        "k3s not running (inactive/dead)",
    )
    _, detail, fix = service("ActiveState=active\nSubState=running\nUnitFileState=disabled\n")
    assert detail == "k3s not enabled (disabled): it would not start at boot"
    assert fix == "on the node: sudo systemctl enable k3s"
    text = base.replace(
        "LoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\n",
        "LoadState=masked\nActiveState=inactive\nSubState=dead\nUnitFileState=masked\n",
    )
    assert rows_of(text)["k3s service"][:2] == ("fail", "k3s is masked")
    assert service("ActiveState=reloading\nSubState=reload\nUnitFileState=static\n")[0] == "pass"


def test_nothing_listening_on_6443():
    text = (CAPTURED / "x86-debian-server.txt").read_text().replace("00000000:192B\n", "")
    assert rows_of(text)["api port"][:2] == ("fail", "nothing listens on TCP 6443: the Kubernetes API is down")


def test_cut_short_output_fails_only_the_checks_whose_facts_did_not_arrive():
    text = (CAPTURED / "pi5-bookworm-nvme-6.6.txt").read_text()
    cut = text[: text.index(marker("throttled")) + len(marker("throttled")) + 1]  # hung in vcgencmd
    timeout = Failure(R.TIMEOUT, "pi1: command did not finish within 20 s", "...")
    rows = rows_of(cut, failure=timeout)
    assert rows["throttling"][:2] == ("fail", "no answer within 20 s")
    assert all(rows[c][0] == "pass" for c in ("reach", "k3s service", "api port", "memory cgroup")), rows
    # the same output without a timeout: the node's answer stopped by itself
    assert rows_of(cut)["throttling"][:2] == ("fail", "the node's facts stop before throttled")


def test_failures_to_connect_are_one_reach_row():
    def reach(failure: Failure) -> list[tuple[str, str, str, str]]:
        rows = _rows(node(), HostResult("pi1", failure=failure), KNOWN, 6)
        return [(r.check, r.status, r.detail, r.fix) for r in rows]

    (row,) = reach(Failure(R.HOST_KEY, "pi1: host key SHA256:abc is not yet known", "rerun with --accept-..."))
    assert row == (
        "reach",
        "fail",
        "host key SHA256:abc is not yet known (not in .piml/known_hosts)",
        "check it, then run `piml up --only preflight --accept-new-host-keys`",
    )
    (row,) = reach(Failure(R.HOST_KEY, "pi1: HOST KEY CHANGED: expected A, got B", "remove its line"))
    assert row[2:] == ("HOST KEY CHANGED: expected A, got B", "remove its line")
    (row,) = reach(Failure(R.TIMEOUT, "pi1: command did not finish within 6 s", "..."))  # nothing printed at all
    assert row[2] == "no answer within 6 s"
    (row,) = reach(Failure(R.UNREACHABLE, "pi1: no answer from 10.0.0.11:22 within the timeout", "check power"))
    assert row[1:] == ("fail", "no answer from 10.0.0.11:22 within the timeout", "check power")
