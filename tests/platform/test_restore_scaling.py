"""`piml restore`'s cluster part against the real control plane: MLflow and Redis are scaled to 0 and their pods
waited for until gone (they hold the volumes being replaced), then started again and waited for until available,
as the real Deployment controller and ReplicaSets report it (piml/kube/scale.py). The volumes' part runs on the
test nodes (tests/backup/test_backup_on_nodes.py), against the stand-in API server there."""

from __future__ import annotations

import time

from piml.kube.deploy import deploy
from piml.kube.scale import scale, wait_available, wait_stopped
from tests.platform.conftest import FAST

STORES = ("mlflow", "redis")


def test_the_stores_stop_and_start_again_and_the_next_up_keeps_them_as_rendered(project, plane):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    kube = plane.kube()
    try:
        before = {name: scale(kube, "piml", name, 0) for name in STORES}
        assert before == {"mlflow": 1, "redis": 1}
        until = time.monotonic() + 60
        assert {name: wait_stopped(kube, "piml", name, until, poll=0.2) for name in STORES} == {
            "mlflow": [],
            "redis": [],
        }
        for name, count in before.items():
            assert scale(kube, "piml", name, count) == 0
        until = time.monotonic() + 60
        for name in STORES:
            ok, how = wait_available(kube, "piml", name, until, poll=0.2)
            assert ok, f"{name}: {how}"
        # a restore's scaling is not piml's configuration: the next `piml up` finds nothing to change
        assert not [a for a in deploy(cluster, project.kubeconfig, rendered, FAST).applied if a.action == "changed"]
    finally:
        kube.close()


def test_pods_that_do_not_stop_are_named_at_the_bound(project, plane):
    """A pod whose end nobody confirms (its board is down; a finalizer plays that here) is named when the bound
    is reached, so that restore stops before it touches a volume still open."""
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    kube = plane.kube()
    pods = kube.request("GET", "/api/v1/namespaces/piml/pods", {"labelSelector": "app.kubernetes.io/name=redis"})
    held = pods["items"][0]["metadata"]["name"]
    path = f"/api/v1/namespaces/piml/pods/{held}"
    patch = "application/merge-patch+json"
    try:
        kube.request("PATCH", path, body={"metadata": {"finalizers": ["piml.test/board-down"]}}, content_type=patch)
        scale(kube, "piml", "redis", 0)
        assert wait_stopped(kube, "piml", "redis", time.monotonic() + 5, poll=0.2) == [held]
    finally:
        kube.request("PATCH", path, body={"metadata": {"finalizers": None}}, content_type=patch)
        kube.close()
