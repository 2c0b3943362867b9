"""The inventory's node labels and taints reconciled on the Node objects (issue 10), against the real API server
(its Node objects as the node stand-in registered them, the real merge-patch and resourceVersion semantics).

k3s sets `node-label` / `node-taint` only when a node registers; piml keeps them true through the API before it
applies the platform, and touches only what it set itself. The race with another writer between piml's read and
its patch is shown with the API stand-in (tests/standins/kubeapi/test_node_label_race.py): a real server cannot be
made to lose that race on demand.
"""

from __future__ import annotations

import json

import pytest

from piml.inventory.validate import parse_inventory_text
from piml.kube.node_labels import MANAGED_LABELS, MANAGED_TAINTS, node_patch, reconcile

INVENTORY = """
k3s_cluster:
  children:
    server:
      hosts:
        node-1: {{ansible_host: 127.0.0.1, ansible_port: 9, piml_model: pi5, piml_memory_gb: 8{node1}}}
    agent:
      hosts:
        node-2: {{ansible_host: 127.0.0.2, ansible_port: 9, piml_model: pi5, piml_memory_gb: 8{node2}}}
"""
# What the node stand-in (as a kubelet and k3s) puts on a Node: everything else is removed after each test.
REGISTERED = ("kubernetes.io/", "beta.kubernetes.io/", "node.kubernetes.io/", "node-role.kubernetes.io/")


def _inventory(tmp_path, node1: str = "", node2: str = ""):
    text = INVENTORY.format(node1=node1, node2=node2)
    return text, parse_inventory_text(text, "hosts.yml", tmp_path / "inventory" / "hosts.yml")


@pytest.fixture
def kube(plane):
    k = plane.kube()
    yield k
    for name in ("node-1", "node-2", "node-3"):  # back to the nodes as registered
        node = k.get(f"/api/v1/nodes/{name}")
        labels = {key: None for key in node["metadata"].get("labels", {}) if not key.startswith(REGISTERED)}
        annotations = {key: None for key in node["metadata"].get("annotations", {}) if key.startswith("piml.io/")}
        k.request(
            "PATCH",
            f"/api/v1/nodes/{name}",
            body={"metadata": {"labels": labels, "annotations": annotations}, "spec": {"taints": None}},
            content_type="application/merge-patch+json",
        )
    k.close()


def _reconcile(kube, tmp_path, **hosts):
    _, inventory = _inventory(tmp_path, **hosts)
    return reconcile(kube, inventory.cluster_nodes)


def _node(kube, name):
    node = kube.get(f"/api/v1/nodes/{name}")
    return (
        node["metadata"].get("labels", {}),
        node["metadata"].get("annotations", {}),
        (node.get("spec") or {}).get("taints", []),
    )


def _patches(plane, mark: int = 0):
    return [r for r in plane.requests()[mark:] if r.verb == "patch" and r.resource == "nodes"]


def test_added_changed_removed_and_others_untouched(plane, kube, tmp_path):
    # Someone else's label and taint (kubectl) on node-2 before piml ever ran.
    kube.request(
        "PATCH",
        "/api/v1/nodes/node-2",
        body={
            "metadata": {"labels": {"team": "vision"}},
            "spec": {"taints": [{"key": "example.com/maintenance", "effect": "NoSchedule"}]},
        },
        content_type="application/merge-patch+json",
    )

    report = _reconcile(
        kube, tmp_path, node2=", piml_labels: {disk: nvme, zone: a}, piml_taints: ['gpu=yes:NoSchedule']"
    )
    assert {c.node for c in report.changed} == {"node-1", "node-2"} and not report.failed
    labels, annotations, taints = _node(kube, "node-2")
    assert (labels["disk"], labels["zone"], labels["piml.io/model"], labels["team"]) == ("nvme", "a", "pi5", "vision")
    assert annotations[MANAGED_LABELS] == "disk,zone" and annotations[MANAGED_TAINTS] == "gpu:NoSchedule"
    assert taints == [
        {"key": "example.com/maintenance", "effect": "NoSchedule"},
        {"key": "gpu", "effect": "NoSchedule", "value": "yes"},
    ]

    # The inventory changes: a value changes, a label goes, a taint's value changes and another is added.
    report = _reconcile(
        kube, tmp_path, node2=", piml_labels: {disk: ssd}, piml_taints: ['gpu=no:NoSchedule', 'ml:PreferNoSchedule']"
    )
    (change,) = report.changed
    assert (change.node, change.labels_set, change.labels_removed) == ("node-2", {"disk": "ssd"}, ["zone"])
    assert (change.taints_added, change.taints_removed) == (
        ["gpu=no:NoSchedule", "ml:PreferNoSchedule"],
        ["gpu=yes:NoSchedule"],
    )
    labels, annotations, taints = _node(kube, "node-2")
    assert labels["disk"] == "ssd" and "zone" not in labels and labels["team"] == "vision"  # not piml's: kept
    assert annotations[MANAGED_LABELS] == "disk" and annotations[MANAGED_TAINTS] == "gpu:NoSchedule,ml:PreferNoSchedule"
    assert [t["key"] for t in taints] == ["example.com/maintenance", "gpu", "ml"] and taints[1]["value"] == "no"

    # Everything gone from the inventory: piml's labels, taints and bookkeeping go; the others and the model stay.
    _reconcile(kube, tmp_path)
    labels, annotations, taints = _node(kube, "node-2")
    assert "disk" not in labels and labels["team"] == "vision" and labels["piml.io/model"] == "pi5"
    assert MANAGED_LABELS not in annotations and MANAGED_TAINTS not in annotations
    assert taints == [{"key": "example.com/maintenance", "effect": "NoSchedule"}]


def test_a_second_run_patches_nothing(plane, kube, tmp_path):
    hosts = {"node1": ", piml_labels: {piml.io/services: 'true'}", "node2": ", piml_taints: ['gpu:NoExecute']"}
    _reconcile(kube, tmp_path, **hosts)
    mark = len(plane.requests())
    generations = {n: kube.get(f"/api/v1/nodes/{n}")["metadata"]["labels"] for n in ("node-1", "node-2")}
    report = _reconcile(kube, tmp_path, **hosts)
    assert not report.changed and report.unchanged == ["node-1", "node-2"]
    assert _patches(plane, mark) == []  # the API server received no patch
    assert {n: kube.get(f"/api/v1/nodes/{n}")["metadata"]["labels"] for n in ("node-1", "node-2")} == generations


def test_what_k3s_set_at_registration_is_adopted_without_a_change(kube, tmp_path):
    """A node registered with the inventory's labels/taints (k3s's config): piml only records that they are its own."""
    kube.request(
        "PATCH",
        "/api/v1/nodes/node-2",
        body={
            "metadata": {"labels": {"disk": "nvme", "piml.io/model": "pi5"}},
            "spec": {"taints": [{"key": "gpu", "effect": "NoExecute", "timeAdded": "2026-11-01T00:00:00Z"}]},
        },
        content_type="application/merge-patch+json",
    )  # timeAdded as `kubectl taint` writes it for NoExecute
    live = kube.get("/api/v1/nodes/node-2")
    patch, change = node_patch(
        live,
        {"disk": "nvme"},
        _inventory(tmp_path, node2=", piml_taints: ['gpu:NoExecute']")[1].agents[0].taints,
        "pi5",
    )
    assert not change and "labels" not in patch["metadata"] and "spec" not in patch  # timeAdded is not rewritten
    assert patch["metadata"]["annotations"] == {MANAGED_LABELS: "disk", MANAGED_TAINTS: "gpu:NoExecute"}


def test_an_unregistered_node_is_skipped(kube, tmp_path):
    text, _ = _inventory(tmp_path, node2=", piml_labels: {disk: nvme}")
    text = text.replace("node-2:", "node-9:")  # node-9 has not joined (its k3s stage failed)
    inventory = parse_inventory_text(text, "hosts.yml", tmp_path / "inventory" / "hosts.yml")
    report = reconcile(kube, inventory.cluster_nodes)
    assert report.missing == ["node-9"] and not report.failed


def test_piml_up_platform_reconciles_labels(piml, project, kube):
    """As a user runs it: a label added to the inventory after the nodes registered reaches the Node."""
    text, _ = _inventory(project.root, node2=", piml_labels: {disk: nvme}, piml_taints: ['dedicated=ml:NoSchedule']")
    project.inventory.write_text(text)
    out = piml("up", "--only", "platform", "--json", cwd=project.root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    labels, annotations, taints = _node(kube, "node-2")
    assert labels["disk"] == "nvme" and annotations[MANAGED_LABELS] == "disk"
    assert taints == [{"key": "dedicated", "effect": "NoSchedule", "value": "ml"}]
    summary = json.loads(out.stdout)["stages"]["platform"]["node_labels"]
    assert {c["node"] for c in summary["changed"]} == {"node-1", "node-2"}

    text, _ = _inventory(project.root)  # the label and taint removed from the inventory
    project.inventory.write_text(text)
    out = piml("up", "--only", "platform", cwd=project.root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    assert "Node node-2: labels -disk; taints -dedicated=ml:NoSchedule" in out.stdout
    labels, annotations, taints = _node(kube, "node-2")
    assert "disk" not in labels and not taints and MANAGED_LABELS not in annotations
