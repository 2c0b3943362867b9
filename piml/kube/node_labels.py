"""The inventory's node labels and taints, kept true on the Node objects through the API.

k3s applies `node-label` / `node-taint` from its config only when a node registers (FACTS.md), so a label or
taint changed in the inventory later would never reach the cluster. piml sets them itself, before it applies
the platform: for each inventory node registered in the cluster it adds and changes the inventory's labels
(`piml_labels`; `piml.io/model` too when the inventory names the model) and taints (`piml_taints`), and
removes the ones it set earlier that the inventory no longer has.

What piml set is recorded on the Node itself, in two annotations: `piml.io/managed-labels` (label keys) and
`piml.io/managed-taints` (`KEY:EFFECT`, a taint's identity), both comma-separated. Labels and taints that are not
listed there (the kubelet's, k3s's, Kubernetes', anything set with kubectl) are never changed or removed, except
that a key the inventory names is set to the inventory's value (and listed from then on). `piml.io/model` is set,
never removed.

One JSON merge patch per node that differs, carrying the Node's resourceVersion as a precondition: a change made
by someone else in between (the node controller adding a taint) is a 409, and piml reads the node again
(bounded). Nodes are done one after the other, every request bounded by the client's timeout.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from piml.kube.client import Kube, KubeError, connect

if TYPE_CHECKING:
    from piml.inventory import Node, Taint
    from piml.project import Cluster

MANAGED_LABELS = "piml.io/managed-labels"
MANAGED_TAINTS = "piml.io/managed-taints"
MODEL_LABEL = "piml.io/model"
ATTEMPTS = 3  # reads and patches of one node, when others change it in between (409)


@dataclass
class NodeChange:
    """What piml changes on one node (label values; taints as KEY[=VALUE]:EFFECT)."""

    node: str
    labels_set: dict[str, str] = field(default_factory=dict)  # added or changed
    labels_removed: list[str] = field(default_factory=list)
    taints_added: list[str] = field(default_factory=list)
    taints_removed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.labels_set or self.labels_removed or self.taints_added or self.taints_removed)

    def __str__(self) -> str:
        parts = []
        labels = [f"{k}={v}" for k, v in self.labels_set.items()] + [f"-{k}" for k in self.labels_removed]
        if labels:
            parts.append("labels " + ", ".join(labels))
        taints = [f"+{t}" for t in self.taints_added] + [f"-{t}" for t in self.taints_removed]
        if taints:
            parts.append("taints " + ", ".join(taints))
        return f"Node {self.node}: " + ("; ".join(parts) or "piml's labels and taints recorded")

    def as_dict(self) -> dict:
        return {
            "node": self.node,
            "labels_set": dict(self.labels_set),
            "labels_removed": list(self.labels_removed),
            "taints_added": list(self.taints_added),
            "taints_removed": list(self.taints_removed),
        }


@dataclass
class NodeLabelsReport:
    changed: list[NodeChange] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the inventory, not (yet) registered: nothing to set
    failed: dict[str, str] = field(default_factory=dict)  # node -> why the API refused

    def as_dict(self) -> dict:
        return {
            "changed": [c.as_dict() for c in self.changed],
            "unchanged": list(self.unchanged),
            "missing": list(self.missing),
            "failed": dict(self.failed),
        }


def _names(text: str | None) -> set[str]:
    return {part.strip() for part in (text or "").split(",") if part.strip()}


def _taint_id(taint: dict) -> str:
    return f"{taint.get('key', '')}:{taint.get('effect', '')}"


def _taint_text(taint: dict) -> str:
    value = taint.get("value") or ""
    return f"{taint.get('key', '')}{'=' + value if value else ''}:{taint.get('effect', '')}"


def _same_taint(a: dict, b: dict) -> bool:
    return (a.get("key"), a.get("value") or "", a.get("effect")) == (
        b.get("key"),
        b.get("value") or "",
        b.get("effect"),
    )


def node_patch(
    live: dict, labels: dict[str, str], taints: Iterable[Taint], model: str | None = None
) -> tuple[dict | None, NodeChange]:
    """The merge patch that makes `live` (a Node) carry the inventory's labels and taints, or None when it does.

    Pure: the tests and `reconcile` share it.
    """
    meta = live.get("metadata") or {}
    name = meta.get("name", "")
    current = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    change = NodeChange(name)

    # Labels: the inventory's, set; the ones piml set before and the inventory dropped, removed.
    wanted = dict(labels)
    also = {MODEL_LABEL: model} if model and MODEL_LABEL not in wanted else {}  # set, never owned nor removed
    label_patch: dict[str, str | None] = {}
    for key, value in {**also, **wanted}.items():
        if current.get(key) != value:
            label_patch[key] = change.labels_set[key] = value
    for key in sorted(_names(annotations.get(MANAGED_LABELS)) - set(wanted) - set(also)):
        if key in current:
            label_patch[key] = None
            change.labels_removed.append(key)

    # Taints: identified by KEY:EFFECT (unique on a Node); others' taints stay, in their order.
    live_taints = (live.get("spec") or {}).get("taints") or []
    wanted_taints: dict[str, dict] = {}
    for taint in taints:
        entry = {"key": taint.key, "effect": taint.effect, **({"value": taint.value} if taint.value else {})}
        wanted_taints[_taint_id(entry)] = entry  # a repeated KEY:EFFECT: the last one wins, as it must be unique
    owned_taints = _names(annotations.get(MANAGED_TAINTS))
    new_taints = [t for t in live_taints if _taint_id(t) not in owned_taints and _taint_id(t) not in wanted_taints]
    for entry in wanted_taints.values():
        same = next((t for t in live_taints if _same_taint(t, entry)), None)
        new_taints.append(same if same is not None else entry)  # an unchanged taint keeps its timeAdded
        if same is None:
            change.taints_added.append(_taint_text(entry))
    change.taints_removed = [_taint_text(t) for t in live_taints if not any(t is n for n in new_taints)]

    annotation_patch: dict[str, str | None] = {}
    for key, names in ((MANAGED_LABELS, wanted), (MANAGED_TAINTS, wanted_taints)):
        text = ",".join(sorted(names))
        if annotations.get(key, "") != text:
            annotation_patch[key] = text or None  # nothing owned: no annotation

    if not (label_patch or annotation_patch or change.taints_added or change.taints_removed):
        return None, change
    patch: dict = {"metadata": {"resourceVersion": meta.get("resourceVersion")}}
    if label_patch:
        patch["metadata"]["labels"] = label_patch
    if annotation_patch:
        patch["metadata"]["annotations"] = annotation_patch
    if change.taints_added or change.taints_removed:
        patch["spec"] = {"taints": new_taints}  # a merge patch replaces the list: hence the resourceVersion
    return patch, change


def reconcile(kube: Kube, nodes: Iterable[Node], progress: Callable[[str], None] | None = None) -> NodeLabelsReport:
    """Set every node's labels and taints to the inventory's (see the module's doc). Raises PimlError only when
    the API cannot be reached (PimlError from the client); a node the API refuses is in `failed`, and the others
    carry on."""
    say = progress or (lambda line: None)
    report = NodeLabelsReport()
    for node in nodes:
        path = f"/api/v1/nodes/{quote(node.name, safe='')}"
        for attempt in range(1, ATTEMPTS + 1):
            live = kube.get(path)
            if live is None:
                report.missing.append(node.name)
                say(f"{'missing':<9} Node {node.name}: not registered, its labels and taints come with k3s's config")
                break
            patch, change = node_patch(live, node.labels, node.taints, node.model)
            if patch is None:
                report.unchanged.append(node.name)
                break
            try:
                kube.request("PATCH", path, body=patch, content_type="application/merge-patch+json")
            except KubeError as exc:
                if exc.status == 409 and attempt < ATTEMPTS:
                    continue  # changed by someone else since we read it: read it again
                message = exc.message.splitlines()[0] if exc.message else "no message"
                report.failed[node.name] = (
                    f"the API refused its labels/taints ({exc.status} {exc.reason}: {message}); "
                    f"check piml_labels / piml_taints of {node.name} in the inventory"
                )
                say(f"{'failed':<9} Node {node.name}: {report.failed[node.name]}")
                break
            report.changed.append(change)
            say(f"{'changed':<9} {change}")
            break
    return report


def reconcile_node_labels(
    cluster: Cluster, kubeconfig: Path, progress: Callable[[str], None] | None = None, request_timeout: float = 15.0
) -> NodeLabelsReport:
    """`piml up`, before the platform: the inventory's labels and taints on the cluster's Node objects."""
    kube = connect(kubeconfig, cluster.paths.show(kubeconfig), request_timeout)
    try:
        return reconcile(kube, cluster.inventory.cluster_nodes, progress)
    finally:
        kube.close()


__all__ = [
    "MANAGED_LABELS",
    "MANAGED_TAINTS",
    "NodeChange",
    "NodeLabelsReport",
    "node_patch",
    "reconcile",
    "reconcile_node_labels",
]
