"""Rows for the ray_external hosts (outside Kubernetes): does the host answer on its SSH port, and does the
cluster's Ray head list it ALIVE with what the inventory says it offers. A host that is asleep is a warning:
nothing in the cluster depends on it."""

from __future__ import annotations

import socket
from collections.abc import Iterable

from piml.health.endpoints import Endpoints
from piml.health.result import PASS, SKIP, WARN, Result
from piml.inventory import Node

REACH_TIMEOUT_S = 3.0
JOIN_FIX = (
    "piml up --only ray-external; on the host: journalctl -u piml-ray-worker (macOS: /var/log/piml-ray-worker.log)"
)


def reach_row(node: Node, group: str) -> Result:
    port = node.port or 22
    try:
        with socket.create_connection((node.address, port), timeout=REACH_TIMEOUT_S):
            pass
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__).lower()
        return Result(group, node.name, "reachable", WARN, f"{node.address}:{port}: {why} (asleep?)", "wake it up")
    return Result(group, node.name, "reachable", PASS, f"{node.address}:{port} answers (ray_external: no k3s here)")


def ray_worker_rows(endpoints: Endpoints, nodes: Iterable[Node], group: str) -> list[Result]:
    """One row per host: ALIVE in the head with its resources (pass), or why not (warn)."""
    from piml.rayext.nodes import HeadUnreachable, alive_external, offers

    nodes = [n for n in nodes if n.ray is not None]
    if not nodes:
        return []
    if not endpoints.ray_dashboard_url or endpoints.ray_token is None:
        return [Result(group, n.name, "ray worker", SKIP, "the Ray head's dashboard is not reachable") for n in nodes]
    try:
        alive = alive_external(endpoints.ray_dashboard_url, endpoints.ray_token)
    except HeadUnreachable as exc:
        return [Result(group, n.name, "ray worker", SKIP, str(exc)) for n in nodes]
    rows = []
    for node in nodes:
        seen = alive.get(node.name)
        if seen is not None and offers(node, seen):
            rows.append(Result(group, node.name, "ray worker", PASS, f"ALIVE: {seen.shown()}"))
            continue
        why = (
            "not ALIVE in the Ray head (asleep, stopped, not joined)"
            if seen is None
            else f"ALIVE, but offers {seen.shown()}: not what the inventory says"
        )
        rows.append(Result(group, node.name, "ray worker", WARN, why, JOIN_FIX))
    return rows
