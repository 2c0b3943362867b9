"""Reach the nodes and learn their facts: connect to all in parallel, one facts round trip each.

Preflight and status both start here. Every node in the selection gets a NodeReport, reached or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from piml.errors import InputError, Problem
from piml.inventory import Node
from piml.inventory.ansible import did_you_mean

if TYPE_CHECKING:
    from piml.facts.model import NodeFacts
    from piml.project import Cluster
    from piml.ssh.results import Failure


@dataclass(frozen=True)
class NodeReport:
    node: Node
    facts: "NodeFacts | None" = None
    failure: "Failure | None" = None
    clock_skew_s: float | None = None  # node clock minus ours, corrected for the round trip

    @property
    def reachable(self) -> bool:
        return self.failure is None and self.facts is not None


def select_nodes(nodes: Iterable[Node], limit: str | None) -> list[Node]:
    """Apply --limit NAME[,NAME] (node names, or the groups server, agent, external) like Ansible."""
    nodes = list(nodes)
    if not limit:
        return nodes
    chosen: list[Node] = []
    for word in (w.strip() for w in limit.split(",") if w.strip()):
        matched = [n for n in nodes if n.name == word or str(n.role) == word]
        if not matched:
            names = [n.name for n in nodes]
            raise InputError(Problem("--limit", f"no node or group named '{word}'", did_you_mean(word, names) if names else "check the inventory"))
        chosen += [n for n in matched if n not in chosen]
    return [n for n in nodes if n in chosen]  # inventory order, as Ansible keeps it


def reach(cluster: "Cluster", nodes: list[Node], accept_new_host_keys: bool, connect_timeout: float = 10.0) -> list[NodeReport]:
    from piml.facts.commands import gather_script
    from piml.facts.model import parse_facts
    from piml.ssh.fleet import Fleet, Timeouts
    from piml.ssh.hostkeys import KnownHosts

    known = KnownHosts(cluster.paths.state / "known_hosts", accept_new=accept_new_host_keys)
    reports: dict[str, NodeReport] = {}
    with Fleet(nodes, known, Timeouts(connect=connect_timeout, command=60.0)) as fleet:
        # Each node connects and runs the facts script in one go (see Fleet.run).
        outputs = fleet.run("sh -s", stdin=gather_script())
    for node in nodes:
        result = outputs[node.name]
        if not result.ok:
            reports[node.name] = NodeReport(node, failure=result.failure)
            continue
        facts = parse_facts(result.value.stdout)
        # The script reads the clock about halfway through the command's run.
        skew = facts.epoch - (result.value.started + result.value.seconds / 2) if facts.epoch is not None else None
        reports[node.name] = NodeReport(node, facts=facts, clock_skew_s=skew)
    return [reports[n.name] for n in nodes]
