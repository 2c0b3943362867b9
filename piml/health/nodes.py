"""Per-node health checks (`piml check`, the `verify` stage of `piml up`), on the facts every command reads.

The nodes are read the one way piml reads nodes: the SSH fleet (piml/ssh/fleet.py: paramiko, host keys
checked strictly against .piml/known_hosts and nothing else, the inventory's user, port and key before the
user's ~/.ssh/config) runs the facts script (piml/facts/commands.py) once per node, all nodes in parallel,
and the checks below are evaluated on the parsed facts. One SSH login and one command per node. A node's
connecting and its command share one time budget (`timeout`); a node still answering when it is spent is
cut off, and every check whose facts had not arrived by then fails with "no answer within N s" while the
checks whose facts had arrived are still evaluated.

Rows (group "nodes", target = node name):
  reach           ssh login as the inventory says, host key known; on failure the node's only row
  k3s service     servers: k3s, agents: k3s-agent, running and enabled
  api port        servers: something listens on TCP 6443 (the Kubernetes API)
  memory cgroup   the memory controller is on (cgroup v2 or v1), k3s needs it (the rule of playbooks/files/probe.py)
  throttling      `vcgencmd get_throttled` shows nothing happening now (retried with `sudo -n` when it fails for
                  a user other than root); skipped without vcgencmd
ray_external nodes do not run k3s: one skip row each and no SSH, so every node asked about shows up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from piml.facts.commands import gather_script
from piml.facts.model import NodeFacts, parse_facts
from piml.facts.parsers import VCGENCMD_FAILED
from piml.facts.sections import split_sections
from piml.health.result import FAIL, PASS, CheckFailed, CheckSkipped, Result, timed
from piml.inventory.model import Node, Role

if TYPE_CHECKING:
    from piml.project import Cluster
    from piml.ssh.results import CommandOutput, HostResult

GROUP = "nodes"
API_PORT = 6443
RECORD_KEYS = "piml up --only preflight --accept-new-host-keys"
THROTTLE_WORDS = {
    "under_voltage": "under-voltage",
    "arm_freq_capped": "ARM frequency capped",
    "throttled": "throttled",
    "soft_temp_limit": "soft temperature limit",
}
# The facts sections each check reads: a check whose sections did not arrive whole cannot be evaluated.
OVERLOADED = "check that the node is up and not overloaded (uptime, free -m)"
NEEDS = {
    "k3s service": ("services",),
    "api port": ("listening",),
    "memory cgroup": ("cgroup", "proc_cgroups"),
    "throttling": ("throttled",),
}


def node_checks(cluster: Cluster, nodes: Iterable[Node], *, timeout: float = 20.0) -> list[Result]:
    """Per node, in parallel: rows with group="nodes", target=node name."""
    nodes = list(nodes)
    if not nodes:
        return []
    k3s_nodes = [n for n in nodes if n.role is not Role.EXTERNAL]
    known_hosts = cluster.paths.known_hosts
    try:
        answers = _gather(k3s_nodes, known_hosts, timeout) if k3s_nodes else {}
    except Exception as exc:  # noqa: BLE001 - e.g. a broken known_hosts file: still rows, never a traceback
        failed = Result(
            GROUP,
            "",
            "reach",
            FAIL,
            f"cannot set up SSH: {type(exc).__name__}: {exc}",
            "check the local machine and .piml/known_hosts",
        )
        return [
            row
            for n in nodes
            for row in (_external(n) if n.role is Role.EXTERNAL else [dataclasses.replace(failed, target=n.name)])
        ]
    rows: list[Result] = []
    for node in nodes:
        rows += _external(node) if node.role is Role.EXTERNAL else _rows(node, answers[node.name], known_hosts, timeout)
    return rows


def _external(node: Node) -> list[Result]:
    """No k3s there: whether it answers (the Ray worker's own row is among the components')."""
    from piml.health.external import reach_row

    return [reach_row(node, GROUP)]


def _gather(nodes: list[Node], known_hosts: Path, timeout: float) -> dict[str, HostResult[CommandOutput]]:
    """The facts script on every node, one SSH login and one command each, in parallel; never records a key."""
    from piml.ssh.fleet import Fleet, Timeouts
    from piml.ssh.hostkeys import KnownHosts

    known = KnownHosts(known_hosts, accept_new=False)  # recording keys is preflight's job, on request
    timeouts = Timeouts(connect=_connect_timeout(timeout), command=timeout, node=timeout)
    with Fleet(nodes, known, timeouts) as fleet:
        return fleet.run("sh -s", stdin=gather_script())


def _rows(node: Node, answer: HostResult[CommandOutput], known_hosts: Path, timeout: float) -> list[Result]:
    output = answer.value
    if output is None:  # no login, or nothing printed: nothing else can be learnt, and one clear row beats five
        return [_unreached(node, answer, known_hosts, timeout)]
    facts = parse_facts(output.stdout)
    sections = split_sections(output.stdout)
    # Sections followed by another one (or by the end marker) arrived whole; the last one of a cut output did not.
    arrived = set(sections.texts) if sections.complete else set(list(sections.texts)[:-1])
    cut = answer.failure is not None

    def row(check: str, body: Callable[[NodeFacts], str]) -> Result:
        def evaluate() -> str:
            missing = [name for name in NEEDS[check] if name not in arrived]
            if missing and cut:
                raise CheckFailed(f"no answer within {timeout:g} s", OVERLOADED)
            if missing:
                raise CheckFailed(
                    f"the node's facts stop before {', '.join(missing)}",
                    "check the node's shell (sh) and its load; `piml status --json` shows what was read",
                )
            return body(facts)

        return timed(GROUP, node.name, check, evaluate)

    user = facts.user or node.user or "the inventory's user"
    rows = [
        dataclasses.replace(
            Result(GROUP, node.name, "reach", PASS, f"ssh as {user}, host key known"), seconds=output.seconds
        )
    ]
    server = node.role is Role.SERVER
    rows.append(row("k3s service", lambda f: _service(f, "k3s" if server else "k3s-agent")))
    if server:
        rows.append(row("api port", _api_port))
    rows.append(row("memory cgroup", _memory_cgroup))
    rows.append(row("throttling", _throttling))
    return rows


def _unreached(node: Node, answer: HostResult[CommandOutput], known_hosts: Path, timeout: float) -> Result:
    from piml.ssh import results as R

    failure = answer.failure
    if failure is None:  # a value-less success does not happen; said plainly if it ever does
        return Result(GROUP, node.name, "reach", FAIL, "the node answered nothing", "check the node's shell (sh)")
    detail = failure.reason.removeprefix(f"{node.name}: ")
    fix = failure.fix
    if failure.kind == R.TIMEOUT:
        detail, fix = f"no answer within {timeout:g} s", OVERLOADED
    elif failure.kind == R.HOST_KEY and "CHANGED" not in detail:
        detail += f" (not in {known_hosts.parent.name}/{known_hosts.name})"
        fix = f"check it, then run `{RECORD_KEYS}`"
    return Result(GROUP, node.name, "reach", FAIL, detail, fix)


# -- the checks (each returns its pass detail, or raises CheckFailed / CheckSkipped) ----------------


def _service(facts: NodeFacts, unit: str) -> str:
    state = facts.k3s_service if unit == "k3s" else facts.k3s_agent_service
    if state is None:
        raise CheckFailed(
            f"systemd told nothing about {unit} (no systemctl on the node?)", f"on the node: systemctl status {unit}"
        )
    if state.loaded is False and not state.masked:
        if state.enabled is None:  # LoadState=not-found: no unit file at all
            raise CheckFailed(f"no {unit}.service: k3s is not installed", "install it: piml up --only k3s")
        raise CheckFailed(
            f"{unit}.service does not load (a broken unit file?)", f"on the node: systemctl status {unit}"
        )
    if state.masked:
        raise CheckFailed(
            f"{unit} is masked", f"on the node: sudo systemctl unmask {unit} && sudo systemctl enable --now {unit}"
        )
    running, enabled = state.is_active, state.is_enabled
    if running and enabled:
        return f"{unit} running and enabled"
    problems = ([] if running else [f"not running ({state.active or '?'}/{state.sub or '?'})"]) + (
        [] if enabled else [f"not enabled ({state.enabled or '?'}): it would not start at boot"]
    )
    fix = (
        f"on the node: sudo systemctl enable {unit}"
        if running
        else f"on the node: sudo journalctl -u {unit} -n 50, then sudo systemctl enable --now {unit}"
    )
    raise CheckFailed(f"{unit} " + "; ".join(problems), fix)


def _api_port(facts: NodeFacts) -> str:
    if facts.listening_tcp is None:
        raise CheckFailed(
            "cannot read the node's listening sockets (/proc/net/tcp)", f"on the node: ss -ltn 'sport = :{API_PORT}'"
        )
    # Any address counts: k3s listens on all of them unless --bind-address names one.
    addresses = sorted({address for address, port in facts.listening_tcp if port == API_PORT})
    if not addresses:
        raise CheckFailed(
            f"nothing listens on TCP {API_PORT}: the Kubernetes API is down",
            "on the node: sudo journalctl -u k3s -n 50",
        )
    return f"{API_PORT} listening on " + ", ".join(addresses)


def _memory_cgroup(facts: NodeFacts) -> str:
    version = facts.cgroup_version
    if not facts.memory_cgroup:
        raise CheckFailed(
            f"memory cgroup off (cgroup v{version or '?'}): k3s fails with 'failed to find memory cgroup'",
            "add cgroup_enable=memory cgroup_memory=1 to /boot/firmware/cmdline.txt and reboot"
            " (piml up --only prepare does it)",
        )
    return f"on (cgroup v{version})"


def _throttling(facts: NodeFacts) -> str:
    if facts.vcgencmd is False:
        raise CheckSkipped("no vcgencmd: not a Raspberry Pi OS node")
    state = facts.throttled
    if state is None:
        unread = next((note for note in facts.notes if note.startswith("throttled: ")), None)
        why = facts.throttled_error or unread or "vcgencmd get_throttled printed nothing"
        fix = (
            "add the user to the video group, or allow it passwordless sudo"
            if why.startswith(VCGENCMD_FAILED)
            else "on the node: vcgencmd get_throttled"
        )
        raise CheckFailed(why, fix)
    if state.now:
        raise CheckFailed(
            f"{hex(state.raw)}: now " + ", ".join(THROTTLE_WORDS.get(f, f) for f in state.now),
            "use the official power supply and a cooler; check: vcgencmd get_throttled",
        )
    since = ""
    if state.since_boot:
        since = f" (since boot: {', '.join(THROTTLE_WORDS.get(f, f) for f in state.since_boot)})"
    return f"{hex(state.raw)}: not throttled now{since}"


def _connect_timeout(budget: float) -> float:
    return max(1.0, min(10.0, budget / 2))  # leave half the budget for the command itself
