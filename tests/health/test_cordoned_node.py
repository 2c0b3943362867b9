"""A cordoned node (a drain, or a `piml upgrade` that stopped on it) is a warning in piml check, not a pass."""

from __future__ import annotations

from piml.health.cluster import _node_results
from piml.project import ProjectPaths, load_cluster


class CannedKube:
    """Answers the node list as an API server would; for the row logic only."""

    def __init__(self, nodes: list[dict]):
        self.nodes = nodes

    def request(self, method, path, query=None):
        assert (method, path) == ("GET", "/api/v1/nodes")
        return {"items": self.nodes}


def _node(name: str, unschedulable: bool) -> dict:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/arch": "arm64"}},
        "spec": {"unschedulable": True} if unschedulable else {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "nodeInfo": {"kubeletVersion": "v1.36.3+k3s1", "architecture": "arm64"},
        },
    }


def test_a_cordoned_node_warns_and_says_how_to_undo_it(tmp_path, piml):
    out = piml("init", "lab", "--yes", "--node", "s1=10.0.0.1:server", "--node", "a1=10.0.0.2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    cluster = load_cluster(ProjectPaths.resolve(tmp_path / "lab", None))
    rows = {r.target: r for r in _node_results(CannedKube([_node("s1", False), _node("a1", True)]), cluster)}
    assert rows["s1"].status == "pass"
    assert rows["a1"].status == "warn" and "cordoned" in rows["a1"].detail
    assert "kubectl uncordon a1" in rows["a1"].fix and not rows["a1"].failed
