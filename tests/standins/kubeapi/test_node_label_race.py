"""The one node-label case kept on the API stand-in: another writer changes the Node between piml's read and its
patch. A real API server refuses the stale patch the same way (409 on the resourceVersion precondition), but cannot
be made to lose the race on demand; the stand-in's `race` makes the other write land just before piml's patch."""

from __future__ import annotations

from piml.inventory.validate import parse_inventory_text
from piml.kube.client import connect
from piml.kube.node_labels import reconcile
from tests.standins.kubeapi.project import LOOPBACK_INVENTORY
from tests.standins.kubeapi.server import FakeKubeAPI

# pi2 with a taint of piml's, so that piml patches it
INVENTORY = LOOPBACK_INVENTORY.replace(
    "127.0.0.2, ansible_port: 9, piml_model: pi5, piml_memory_gb: 8}",
    "127.0.0.2, ansible_port: 9, piml_model: pi5, piml_memory_gb: 8, piml_taints: ['gpu:NoSchedule']}",
)


def test_a_concurrent_change_is_read_again_and_kept(tmp_path):
    # Between piml's read and its patch, the node controller taints pi2: piml's stale patch gets a 409, and the
    # second attempt keeps that taint next to piml's.
    def controller(node):
        node.setdefault("spec", {})["taints"] = [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]
        return node

    api = FakeKubeAPI().start()
    try:
        api.race("nodes", "pi2", controller)
        path = tmp_path / "kubeconfig"
        api.write_kubeconfig(path)
        kube = connect(path, request_timeout=5.0)
        try:
            inventory = parse_inventory_text(INVENTORY, "hosts.yml", tmp_path / "inventory" / "hosts.yml")
            report = reconcile(kube, inventory.cluster_nodes)
        finally:
            kube.close()
        assert not report.failed and "pi2" in {c.node for c in report.changed}
        patches = [p for m, p in api.requests if m == "PATCH" and p.startswith("/api/v1/nodes/pi2")]
        assert len(patches) == 2
        assert [t["key"] for t in api.get("nodes", "", "pi2")["spec"]["taints"]] == [
            "node.kubernetes.io/not-ready",
            "gpu",
        ]
    finally:
        api.stop()
