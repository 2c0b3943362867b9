"""What the cluster's Ray head says about the external workers: its node list (the dashboard's state API, with
the Ray token), matched to inventory hosts by the `piml.io/host` label their `ray start` carries."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from piml.inventory import Node
from piml.rayext.units import HOST_LABEL

REQUEST_TIMEOUT_S = 10.0
POLL_S = 2.0


@dataclass(frozen=True)
class RayNode:
    node_id: str
    resources: dict[str, float] = field(default_factory=dict)

    def shown(self) -> str:
        """CPU 4, GPU 0, gpu_apple_mps 1: what it offers, without Ray's own bookkeeping entries."""
        own = ("memory", "object_store_memory")
        parts = [
            f"{name} {value:g}"
            for name, value in sorted(self.resources.items(), key=lambda kv: (kv[0] not in ("CPU", "GPU"), kv[0]))
            if name not in own and not name.startswith(("node:", "accelerator_type:"))
        ]
        return ", ".join(parts)


class HeadUnreachable(RuntimeError):
    """The head's dashboard did not answer (or refused the token): one line naming it."""


def alive_external(dashboard_url: str, token: str) -> dict[str, RayNode]:
    """The head's ALIVE nodes that carry piml's host label, by host."""
    query = "detail=true&limit=1000&timeout=8&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE"
    request = urllib.request.Request(
        f"{dashboard_url}/api/v0/nodes?{query}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        refused = "refused the Ray token" if exc.code in (401, 403) else f"answered HTTP {exc.code}"
        raise HeadUnreachable(f"the Ray head's dashboard {refused}") from None
    except (OSError, ValueError) as exc:
        raise HeadUnreachable(f"the Ray head's dashboard did not answer: {exc}") from None
    found = {}
    for entry in ((body.get("data") or {}).get("result") or {}).get("result") or []:
        host = (entry.get("labels") or {}).get(HOST_LABEL)
        if host and entry.get("state") == "ALIVE":
            found[host] = RayNode(entry.get("node_id", ""), entry.get("resources_total") or {})
    return found


def offers(node: Node, seen: RayNode) -> bool:
    """Whether the live node offers what the inventory asks of it (a changed resource shows the old until the
    worker has restarted)."""
    worker = node.ray
    assert worker is not None
    wanted: dict[str, float] = {name: float(value) for name, value in worker.resources.items()}
    if worker.num_cpus is not None:
        wanted["CPU"] = float(worker.num_cpus)
    if worker.num_gpus is not None:
        wanted["GPU"] = float(worker.num_gpus)
    return all(float(seen.resources.get(name, 0.0)) == value for name, value in wanted.items())


def wait_joined(
    dashboard_url: str,
    token: str,
    nodes: Iterable[Node],
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, RayNode | None]:
    """Poll the head until every host is ALIVE with what it should offer, or `timeout` passes: {host: node or
    None}. A head that stops answering ends the wait at once (HeadUnreachable)."""
    waiting = {n.name: n for n in nodes}
    joined: dict[str, RayNode | None] = {name: None for name in waiting}
    deadline = clock() + timeout
    while waiting:
        alive = alive_external(dashboard_url, token)
        for name, node in list(waiting.items()):
            seen = alive.get(name)
            if seen is not None and offers(node, seen):
                joined[name] = seen
                del waiting[name]
        if not waiting or clock() >= deadline:
            break
        sleep(min(POLL_S, max(0.0, deadline - clock())))
    return joined
