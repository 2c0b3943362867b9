"""Reach the nodes and learn their facts: connect to all in parallel, one facts round trip each.

Preflight and status both start here. Every node in the selection gets a NodeReport, reached or not.
`piml up` does not wait for ray_external hosts (machines outside Kubernetes, often asleep): they are reached
alongside the k3s nodes, and one that has not answered shortly after the k3s nodes did is reported as such.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from piml.errors import InputError, Problem
from piml.inventory import Node, Role
from piml.inventory.ansible import did_you_mean

if TYPE_CHECKING:
    from piml.facts.model import NodeFacts
    from piml.project import Cluster
    from piml.ssh.hostkeys import KnownHosts
    from piml.ssh.results import CommandOutput, Failure, HostResult

OUTSIDE_GRACE_S = 2.0  # `piml up`: how long ray_external hosts may take after the k3s nodes have answered


@dataclass(frozen=True)
class NodeReport:
    node: Node
    facts: NodeFacts | None = None
    failure: Failure | None = None
    clock_skew_s: float | None = None  # node clock minus ours, corrected for the round trip

    @property
    def reachable(self) -> bool:
        return self.failure is None and self.facts is not None


def select_nodes(nodes: Iterable[Node], limit: str | None, k3s_only: bool = False) -> list[Node]:
    """Apply --limit NAME[,NAME] (node names, or the groups server, agent, external) like Ansible.

    The one place a selection is resolved, for every command that takes --limit. None (no --limit) is every
    node; a --limit that names no node (`''` from an unset shell variable, `' '`, `','`) is an error, never
    "every node" (as an empty limit is to Ansible). k3s_only: the command acts on k3s nodes only (teardown --k3s,
    check), so ray_external hosts are left out, and a selection of nothing but them is an error too.
    """
    nodes = list(nodes)
    if limit is None:
        return [n for n in nodes if n.role is not Role.EXTERNAL] if k3s_only else nodes
    words = [w.strip() for w in limit.split(",") if w.strip()]
    if not words:
        raise InputError(
            Problem(
                "--limit",
                f"{limit!r} names no node (an empty variable?)",
                "name nodes or groups, e.g. --limit pi1,pi2 or --limit agent; leave --limit out for every node",
            )
        )
    chosen: list[Node] = []
    for word in words:
        matched = [n for n in nodes if n.name == word or str(n.role) == word]
        if not matched:
            names = [n.name for n in nodes]
            raise InputError(
                Problem(
                    "--limit",
                    f"no node or group named '{word}'",
                    did_you_mean(word, names) if names else "check the inventory",
                )
            )
        chosen += [n for n in matched if n not in chosen]
    selected = [n for n in nodes if n in chosen]  # inventory order, as Ansible keeps it
    if k3s_only:
        selected = [n for n in selected if n.role is not Role.EXTERNAL]
        if not selected:
            raise InputError(
                Problem(
                    "--limit",
                    f"'{limit}' selects only ray_external hosts, and this command acts on k3s nodes only",
                    "name k3s nodes or the groups server/agent; leave --limit out for every node",
                )
            )
    return selected


def reach(
    cluster: Cluster,
    nodes: list[Node],
    accept_new_host_keys: bool,
    connect_timeout: float = 10.0,
    outside_grace: float | None = None,
) -> list[NodeReport]:
    """Every node's facts (or why not), in `nodes` order.

    outside_grace: None waits for every node (status, check). A number (`piml up`) waits for ray_external
    hosts only that many seconds after the k3s nodes are done: nothing in the cluster's stages runs on them,
    so an asleep or unreachable one must not hold the others up. One that has not answered by then gets an
    unreachable failure saying so; its connection attempt ends on its own timeouts, in the background.
    """
    from piml.ssh.fleet import Timeouts
    from piml.ssh.hostkeys import KnownHosts

    known = KnownHosts(cluster.paths.known_hosts, accept_new=accept_new_host_keys)
    timeouts = Timeouts(connect=connect_timeout, command=60.0)
    inside = [n for n in nodes if n.role is not Role.EXTERNAL]
    outside = [n for n in nodes if n.role is Role.EXTERNAL]
    if outside_grace is None or not inside or not outside:
        outputs = _gather(nodes, known, timeouts)
    else:
        late = [_Late(node, known, timeouts) for node in outside]
        outputs = _gather(inside, known, timeouts)
        deadline = time.monotonic() + outside_grace
        for job in late:
            outputs[job.node.name] = job.wait(max(0.0, deadline - time.monotonic()), outside_grace)
    reports: dict[str, NodeReport] = {}
    for node in nodes:
        result = outputs[node.name]
        if not result.ok:
            reports[node.name] = NodeReport(node, failure=result.failure)
            continue
        reports[node.name] = _report(node, result.value)
    return [reports[n.name] for n in nodes]


def _report(node: Node, output: CommandOutput) -> NodeReport:
    from piml.facts.model import parse_facts

    facts = parse_facts(output.stdout)
    # The script reads the clock about halfway through the command's run.
    skew = facts.epoch - (output.started + output.seconds / 2) if facts.epoch is not None else None
    return NodeReport(node, facts=facts, clock_skew_s=skew)


def _gather(nodes: list[Node], known: KnownHosts, timeouts) -> dict[str, HostResult]:
    """Each node connects and runs the facts script in one go (see Fleet.run), all in parallel."""
    from piml.facts.commands import gather_script
    from piml.ssh.fleet import Fleet

    with Fleet(nodes, known, timeouts) as fleet:
        return fleet.run("sh -s", stdin=gather_script())


class _Late:
    """One ray_external host reached in a daemon thread of its own, which nobody has to wait for."""

    def __init__(self, node: Node, known: KnownHosts, timeouts):
        self.node = node
        self.result: HostResult | None = None
        self._thread = threading.Thread(
            target=self._run, args=(known, timeouts), name=f"piml-reach-{node.name}", daemon=True
        )
        self._thread.start()

    def _run(self, known: KnownHosts, timeouts) -> None:
        from piml.facts.commands import gather_script
        from piml.ssh import results as R
        from piml.ssh.fleet import Fleet
        from piml.ssh.results import Failure, HostResult

        class Alone(Fleet):
            # Fleet's worker pool would make the interpreter wait for this host at exit; one host needs no pool.
            def _parallel(self, work, nodes):
                return {r.node: r for r in map(work, nodes)}

        try:
            with Alone([self.node], known, timeouts) as fleet:
                self.result = fleet.run("sh -s", stdin=gather_script())[self.node.name]
        except Exception as exc:  # noqa: BLE001 - a background failure is this host's row, nothing more
            self.result = HostResult(
                self.node.name,
                failure=Failure(R.UNREACHABLE, f"{self.node.name}: {type(exc).__name__}: {exc}", "check the host"),
            )

    def wait(self, seconds: float, grace: float) -> HostResult:
        from piml.ssh import results as R
        from piml.ssh.results import Failure, HostResult

        self._thread.join(seconds)
        if self.result is not None:
            return self.result
        return HostResult(
            self.node.name,
            failure=Failure(
                R.UNREACHABLE,
                f"{self.node.name}: no answer from {self.node.address} within {grace:g} s of the k3s nodes (asleep or off the network?)",
                "wake it or check its network; `piml status` waits for it",
            ),
        )
