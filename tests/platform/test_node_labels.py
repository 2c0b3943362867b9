"""The inventory's node labels and taints reconciled on the Node objects (issue 10), against the API stand-in.

k3s sets `node-label` / `node-taint` only when a node registers; piml keeps them true through the API before it
applies the platform, and touches only what it set itself.
"""

from __future__ import annotations

import json

from piml.inventory.validate import parse_inventory_text
from piml.kube.client import connect
from piml.kube.node_labels import MANAGED_LABELS, MANAGED_TAINTS, node_patch, reconcile

INVENTORY = """
k3s_cluster:
  children:
    server:
      hosts:
        pi1: {{ansible_host: 127.0.0.1, ansible_port: 9, piml_model: pi5, piml_memory_gb: 8{pi1}}}
    agent:
      hosts:
        pi2: {{ansible_host: 127.0.0.2, ansible_port: 9, piml_model: pi5, piml_memory_gb: 8{pi2}}}
"""


def _inventory(tmp_path, pi1: str = "", pi2: str = ""):
    text = INVENTORY.format(pi1=pi1, pi2=pi2)
    return text, parse_inventory_text(text, "hosts.yml", tmp_path / "inventory" / "hosts.yml")


def _reconcile(kubeapi, tmp_path, **hosts):
    _, inventory = _inventory(tmp_path, **hosts)
    path = tmp_path / "kubeconfig"
    kubeapi.write_kubeconfig(path)
    kube = connect(path, request_timeout=5.0)
    try:
        return reconcile(kube, inventory.cluster_nodes)
    finally:
        kube.close()


def _node(kubeapi, name):
    node = kubeapi.get("nodes", "", name)
    return node["metadata"].get("labels", {}), node["metadata"].get("annotations", {}), node.get("spec", {}).get("taints", [])


def _patches(kubeapi):
    return [p for m, p in kubeapi.requests if m == "PATCH" and p.startswith("/api/v1/nodes/")]


def test_added_changed_removed_and_others_untouched(kubeapi, tmp_path):
    # Someone else's label and taint (kubectl, the node controller) on pi2 before piml ever ran.
    kubeapi.objects["nodes", "", "pi2"]["metadata"]["labels"]["team"] = "vision"
    kubeapi.objects["nodes", "", "pi2"]["spec"] = {"taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}

    report = _reconcile(kubeapi, tmp_path, pi2=", piml_labels: {disk: nvme, zone: a}, piml_taints: ['gpu=yes:NoSchedule']")
    assert {c.node for c in report.changed} == {"pi1", "pi2"} and not report.failed
    labels, annotations, taints = _node(kubeapi, "pi2")
    assert (labels["disk"], labels["zone"], labels["piml.io/model"], labels["team"]) == ("nvme", "a", "pi5", "vision")
    assert annotations[MANAGED_LABELS] == "disk,zone" and annotations[MANAGED_TAINTS] == "gpu:NoSchedule"
    assert taints == [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
                      {"key": "gpu", "effect": "NoSchedule", "value": "yes"}]

    # The inventory changes: a value changes, a label goes, a taint's value changes and another is added.
    report = _reconcile(kubeapi, tmp_path, pi2=", piml_labels: {disk: ssd}, piml_taints: ['gpu=no:NoSchedule', 'ml:PreferNoSchedule']")
    (change,) = report.changed
    assert (change.node, change.labels_set, change.labels_removed) == ("pi2", {"disk": "ssd"}, ["zone"])
    assert (change.taints_added, change.taints_removed) == (["gpu=no:NoSchedule", "ml:PreferNoSchedule"], ["gpu=yes:NoSchedule"])
    labels, annotations, taints = _node(kubeapi, "pi2")
    assert labels["disk"] == "ssd" and "zone" not in labels and labels["team"] == "vision"  # not piml's: kept
    assert annotations[MANAGED_LABELS] == "disk" and annotations[MANAGED_TAINTS] == "gpu:NoSchedule,ml:PreferNoSchedule"
    assert [t["key"] for t in taints] == ["node.kubernetes.io/unschedulable", "gpu", "ml"] and taints[1]["value"] == "no"

    # Everything gone from the inventory: piml's labels, taints and bookkeeping go; the others and the model stay.
    _reconcile(kubeapi, tmp_path)
    labels, annotations, taints = _node(kubeapi, "pi2")
    assert "disk" not in labels and labels["team"] == "vision" and labels["piml.io/model"] == "pi5"
    assert MANAGED_LABELS not in annotations and MANAGED_TAINTS not in annotations
    assert taints == [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]


def test_a_second_run_patches_nothing(kubeapi, tmp_path):
    hosts = {"pi1": ", piml_labels: {piml.io/services: 'true'}", "pi2": ", piml_taints: ['gpu:NoExecute']"}
    _reconcile(kubeapi, tmp_path, **hosts)
    before = len(_patches(kubeapi))
    versions = {n: kubeapi.get("nodes", "", n)["metadata"]["resourceVersion"] for n in ("pi1", "pi2")}
    report = _reconcile(kubeapi, tmp_path, **hosts)
    assert not report.changed and report.unchanged == ["pi1", "pi2"]
    assert len(_patches(kubeapi)) == before
    assert {n: kubeapi.get("nodes", "", n)["metadata"]["resourceVersion"] for n in ("pi1", "pi2")} == versions


def test_what_k3s_set_at_registration_is_adopted_without_a_change(kubeapi, tmp_path):
    """A node registered with the inventory's labels/taints (k3s's config): piml only records that they are its own."""
    node = kubeapi.objects["nodes", "", "pi2"]
    node["metadata"]["labels"].update({"disk": "nvme", "piml.io/model": "pi5"})
    node["spec"] = {"taints": [{"key": "gpu", "effect": "NoExecute", "timeAdded": "2026-11-01T00:00:00Z"}]}
    patch, change = node_patch(kubeapi.get("nodes", "", "pi2"), {"disk": "nvme"},
                               _inventory(tmp_path, pi2=", piml_taints: ['gpu:NoExecute']")[1].agents[0].taints, "pi5")
    assert not change and "labels" not in patch["metadata"] and "spec" not in patch  # the timeAdded taint is not rewritten
    assert patch["metadata"]["annotations"] == {MANAGED_LABELS: "disk", MANAGED_TAINTS: "gpu:NoExecute"}


def test_a_concurrent_change_is_read_again_and_kept(kubeapi, tmp_path):
    # Between piml's read and its patch, the node controller taints pi2: piml's stale patch gets a 409, and the
    # second attempt keeps that taint next to piml's.
    def controller(node):
        node.setdefault("spec", {})["taints"] = [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]
        return node

    kubeapi.race("nodes", "pi2", controller)
    report = _reconcile(kubeapi, tmp_path, pi2=", piml_taints: ['gpu:NoSchedule']")
    assert not report.failed and "pi2" in {c.node for c in report.changed}
    assert len([p for p in _patches(kubeapi) if p.startswith("/api/v1/nodes/pi2")]) == 2
    assert [t["key"] for t in _node(kubeapi, "pi2")[2]] == ["node.kubernetes.io/not-ready", "gpu"]


def test_an_unregistered_node_is_skipped(make_api, tmp_path):
    kubeapi = make_api(nodes=1)  # pi2 has not joined (its k3s stage failed): nothing to set, nothing fails
    report = _reconcile(kubeapi, tmp_path, pi2=", piml_labels: {disk: nvme}")
    assert report.missing == ["pi2"] and not report.failed


def test_piml_up_platform_reconciles_labels(piml, project, kubeapi):
    """As a user runs it: a label added to the inventory after the nodes registered reaches the Node."""
    text, _ = _inventory(project.root, pi2=", piml_labels: {disk: nvme}, piml_taints: ['dedicated=ml:NoSchedule']")
    (project.root / "inventory").mkdir(exist_ok=True)
    (project.root / "inventory/hosts.yml").write_text(text)
    out = piml("up", "--only", "platform", "--json", cwd=project.root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    labels, annotations, taints = _node(kubeapi, "pi2")
    assert labels["disk"] == "nvme" and annotations[MANAGED_LABELS] == "disk"
    assert taints == [{"key": "dedicated", "effect": "NoSchedule", "value": "ml"}]
    summary = json.loads(out.stdout)["stages"]["platform"]["node_labels"]
    assert {c["node"] for c in summary["changed"]} == {"pi1", "pi2"}

    text, _ = _inventory(project.root)  # the label and taint removed from the inventory
    (project.root / "inventory/hosts.yml").write_text(text)
    out = piml("up", "--only", "platform", cwd=project.root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    assert "Node pi2: labels -disk; taints -dedicated=ml:NoSchedule" in out.stdout
    labels, annotations, taints = _node(kubeapi, "pi2")
    assert "disk" not in labels and not taints and MANAGED_LABELS not in annotations
