"""Teardown (data kept unless purge, waited for as the real controllers delete), status, and no secret in any
output."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time

import pytest

from piml.kube.deploy import DeployError, deploy
from piml.kube.status import cluster_status
from piml.kube.teardown import teardown_platform
from tests.controlplane import faults
from tests.platform.conftest import FAST, SHORT, Project, api_gone
from tests.platform.test_deploy import project_objects


def helm_chart_dependents(kube) -> list[str]:
    """What in the cluster a HelmChart owns (k3s's Helm controller's ServiceAccounts, values, content, Jobs, ...)."""
    paths = [f"/api/v1/namespaces/kube-system/{kinds}" for kinds in ("serviceaccounts", "configmaps", "secrets")] + [
        "/apis/batch/v1/namespaces/kube-system/jobs",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    ]
    return [
        f"{item['kind'] if 'kind' in item else path.rsplit('/', 1)[1]} {item['metadata']['name']}"
        for path in paths
        for item in kube.request("GET", path)["items"]
        if any(o.get("kind") == "HelmChart" for o in item["metadata"].get("ownerReferences", []))
    ]


def test_teardown_keeps_the_volumes(project, plane):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    mark = len(plane.requests())
    lines = []
    report = teardown_platform(cluster, project.kubeconfig, timeout=120, poll=0.2, progress=lines.append)
    assert {str(r) for r in report.kept} == {
        "PersistentVolumeClaim piml/mlflow-data",
        "PersistentVolumeClaim piml/redis-data",
        "Namespace piml",
    }
    assert len(lines) == len(report.deleted) and not report.still_going
    kube = plane.kube()
    try:
        assert set(project_objects(kube)) == {
            "PersistentVolumeClaim piml/mlflow-data",
            "PersistentVolumeClaim piml/redis-data",
            "Namespace /piml",
        }
        # Waited for: the pods are gone (the kubelets stopped them), and so are the HelmCharts (k3s ran helm delete).
        assert kube.request("GET", "/api/v1/namespaces/piml/pods")["items"] == []
        assert kube.request("GET", "/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts")["items"] == []
        # ... and so is what the real Helm controller made for them (its uninstall handler runs twice and makes
        # them again; an `up` right after took them over, then the garbage collector took them away)
        assert helm_chart_dependents(kube) == []
    finally:
        kube.close()
    deletes = [r.resource for r in plane.requests()[mark:] if r.verb == "delete"]
    assert deletes.index("rayclusters") < deletes.index("deployments") < deletes.index("helmcharts")

    # Up again: the volumes are still there (bound to their nodes), the rest comes back.
    again = deploy(cluster, project.kubeconfig, rendered, FAST)
    assert again.ok and again.unchanged == 3 and again.created == len(again.applied) - 3  # namespace, two claims


def test_teardown_waits_for_what_the_helm_controller_made_for_the_charts(project, plane):
    """An `up` right after teardown made a HelmChart take over its predecessor's ServiceAccount, which the garbage
    collector then deleted: the chart's uninstall Job could never start (seen in CI). Teardown waits for them."""
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    kube = plane.kube()
    held = "/api/v1/namespaces/kube-system/serviceaccounts/helm-keda"

    def hold(finalizers: list[str]) -> None:  # a finalizer holds it after its deletion, as a busy collector would
        body = {"metadata": {"finalizers": finalizers}}
        kube.request("PATCH", held, body=body, content_type="application/merge-patch+json")

    try:
        hold(["piml.test/hold"])
        report = teardown_platform(cluster, project.kubeconfig, timeout=45, poll=0.2)
        assert not report.still_going, report.waiting_for
        assert report.waiting_for == {
            "ServiceAccount kube-system/helm-keda": "left by k3s's Helm controller; the garbage collector removes it"
        }
        assert kube.get(held)["metadata"].get("deletionTimestamp")
        hold([])
        # up right after, then the collector lets go while teardown waits: it ends clean, nothing of the charts left
        deploy(cluster, project.kubeconfig, rendered, FAST)
        hold(["piml.test/hold"])
        threading.Timer(3, hold, ([],)).start()
        report = teardown_platform(cluster, project.kubeconfig, timeout=60, poll=0.2)
        assert not report.waiting_for and helm_chart_dependents(kube) == []
    finally:
        if kube.get(held):
            hold([])
        kube.close()


def test_a_chart_whose_uninstall_was_slow_goes_as_soon_as_it_is_done(own_plane, tmp_path):
    """The Helm controller of k3s v1.36.0 to v1.36.2 (v0.17.1) retries a HelmChart's removal with a growing delay
    (lasso's rate limiter: up to 30 s, then 2 min after 30 failures), and the success of its own uninstall Job only
    queues the chart behind that delay: a chart deleted moments after it was made, on a busy machine, stayed minutes
    after its uninstall (seen in CI: teardown ran out of time). Teardown nudges the controller while it waits. Here
    the uninstall pods crash-loop for a minute, then succeed: the charts go within seconds of that. The plane runs
    v0.17.7 (k3s v1.36.3), which waits without piling up delays; on v0.17.1 this test fails without the nudge (45 s).
    On a plane of its own: retry delays for a chart's name outlive the chart, and must not reach other tests."""
    plane = own_plane()
    project = Project(tmp_path / "lab", plane)
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    for chart in ("kuberay-operator", "keda"):
        plane.inject(f"helm-delete-{chart}", "crash")
    released: list[float] = []

    def release() -> None:
        faults.clear(plane.dir)
        released.append(time.monotonic())

    timer = threading.Timer(60, release)
    timer.start()
    try:
        report = teardown_platform(cluster, project.kubeconfig, timeout=150, poll=0.2)
        done = time.monotonic()
    finally:
        timer.cancel()
    assert released, f"teardown ended before the uninstall pods were let go: {report.waiting_for}"
    assert not report.still_going, report.waiting_for
    assert done - released[0] < 20, f"the charts went {done - released[0]:.0f} s after their uninstall could run"


def test_a_charts_uninstall_keeps_what_it_runs_as_until_it_is_done(own_plane, tmp_path):
    """k3s's Helm controller uninstalls a chart with a Job that runs as the chart's ServiceAccount, which the chart
    owns. A HelmChart deleted in the foreground has the garbage collector delete what it owns first: on a busy
    machine the ServiceAccount went before the Job made its pod, and the Job never could ('serviceaccount
    "helm-kuberay-operator" not found', seen in CI: the chart stayed for good). Teardown deletes HelmCharts in the
    background: what they own stays until they are gone. Here the uninstall pods crash-loop while we look.
    On a plane of its own: the faults are by name, and other tests' charts must not crash."""
    plane = own_plane()
    project = Project(tmp_path / "lab", plane)
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    charts = ("kuberay-operator", "keda")
    for chart in charts:
        plane.inject(f"helm-delete-{chart}", "crash")
    report = teardown_platform(cluster, project.kubeconfig, timeout=20, poll=0.2)
    assert report.still_going, "the charts went while their uninstall could not run"
    kube = plane.kube()
    try:
        for chart in charts:
            live = kube.get(f"/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts/{chart}")
            assert "foregroundDeletion" not in live["metadata"]["finalizers"], chart
        # the uninstall Jobs make their pods (crashing here), as the chart's ServiceAccount, still there
        pending, until = set(charts), time.monotonic() + 60
        while pending and time.monotonic() < until:
            for chart in list(pending):
                account = kube.get(f"/api/v1/namespaces/kube-system/serviceaccounts/helm-{chart}")
                assert account and not account["metadata"].get("deletionTimestamp"), f"helm-{chart} went first"
                selector = {"labelSelector": f"job-name=helm-delete-{chart}"}
                if kube.request("GET", "/api/v1/namespaces/kube-system/pods", selector)["items"]:
                    pending.discard(chart)
            time.sleep(0.5)
        assert not pending, f"no uninstall pod in 60 s for {pending}"
    finally:
        kube.close()
    faults.clear(plane.dir)
    report = teardown_platform(cluster, project.kubeconfig, timeout=120, poll=0.2)
    assert not report.still_going, report.waiting_for


def test_purge_deletes_the_data(project, plane):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    report = teardown_platform(cluster, project.kubeconfig, purge=True, timeout=120, poll=0.2)
    assert not report.kept and not report.still_going
    assert {"PersistentVolumeClaim piml/redis-data", "Namespace piml"} <= {str(r) for r in report.deleted}
    assert report.as_dict()["purge"] is True
    kube = plane.kube()
    try:
        assert not project_objects(kube)
        assert kube.get("/api/v1/namespaces/piml") is None  # Terminating, then gone: waited for
        # local-path's reclaim policy is Delete: the volumes went with their claims.
        volumes = kube.request("GET", "/api/v1/persistentvolumes")["items"]
        assert not [v for v in volumes if (v["spec"].get("claimRef") or {}).get("namespace") == "piml"]
    finally:
        kube.close()
    # Nothing left: a second teardown has nothing to do.
    assert not teardown_platform(cluster, project.kubeconfig, purge=True, timeout=30, poll=0.2).deleted


def test_status_reads_nodes_and_components(project, plane):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    kube = plane.kube()
    try:  # node-3 reports memory pressure, as its kubelet would
        node = kube.get("/api/v1/nodes/node-3")
        conditions = [
            dict(c, status="True", reason="KubeletHasInsufficientMemory") if c["type"] == "MemoryPressure" else c
            for c in node["status"]["conditions"]
        ]
        kube.request(
            "PATCH",
            "/api/v1/nodes/node-3/status",
            body={"status": {"conditions": conditions}},
            content_type="application/strategic-merge-patch+json",
        )
    finally:
        kube.close()
    status = cluster_status(cluster, project.kubeconfig)
    json.dumps(status)  # --json ready
    assert status["reachable"] and status["version"] == "v1.36.3"  # the API server's own version
    nodes = {n["name"]: n for n in status["nodes"]}
    assert set(nodes) == {"node-1", "node-2", "node-3"}
    assert nodes["node-1"]["ready"] and nodes["node-1"]["pressure"] == []
    assert nodes["node-1"]["kubelet"] == "v1.36.3+k3s1"
    assert nodes["node-3"]["pressure"] == ["MemoryPressure"] and not status["healthy"]
    components = {(c["kind"], c["name"]): c for c in status["components"]}
    assert components["Deployment", "mlflow"]["ready_replicas"] == components["Deployment", "mlflow"]["replicas"] == 1
    assert components["RayCluster", "ray"]["state"] == "ready"  # as the real KubeRay operator says
    assert components["HelmChart", "kuberay-operator"]["chart"] == "kuberay-operator 1.7.0"
    assert {v["name"]: v["phase"] for v in status["volumes"]} == {"mlflow-data": "Bound", "redis-data": "Bound"}
    assert status["urls"] == {
        "mlflow": "http://127.0.0.1/mlflow/",
        "ray dashboard": "http://127.0.0.1/ray/",
        "dask dashboard": "http://127.0.0.1/dask/status",
    }


def test_status_shows_what_is_not_ready(project, plane):
    plane.inject("redis", "oom")
    cluster, rendered = project.render()
    with pytest.raises(DeployError):
        deploy(cluster, project.kubeconfig, rendered, SHORT)
    status = cluster_status(cluster, project.kubeconfig)
    redis = next(c for c in status["components"] if c["name"] == "redis" and c["kind"] == "Deployment")
    assert redis["ready"] is False and redis["ready_replicas"] == 0 and not status["healthy"]


def test_status_of_an_unreachable_cluster(project):
    cluster, _ = project.render()
    with api_gone(project):
        status = cluster_status(cluster, project.kubeconfig, request_timeout=2)
    assert status["reachable"] is False and "cannot reach the Kubernetes API" in status["error"]


def test_no_secret_in_any_output(project, plane, caplog):
    caplog.set_level(logging.DEBUG)
    plane.inject("dask-scheduler", "crash", logs=["starting", "boom"])
    cluster, rendered = project.render()
    lines: list[str] = []
    with pytest.raises(DeployError) as caught:
        deploy(cluster, project.kubeconfig, rendered, SHORT, progress=lines.append)
    teardown = teardown_platform(cluster, project.kubeconfig, purge=True, timeout=120, poll=0.2, progress=lines.append)
    said = "\n".join(
        [
            *lines,
            str(caught.value),
            json.dumps(caught.value.report.as_dict()),
            json.dumps(teardown.as_dict()),
            json.dumps(cluster_status(cluster, project.kubeconfig)),
            caplog.text,
        ]
    )
    assert "Secret piml/redis" in said  # objects are named ...
    for name, value in project.secrets.items():  # ... their values never, not even base64-encoded
        assert value not in said and base64.b64encode(value.encode()).decode() not in said, name


def test_what_a_finalizer_holds_is_named_with_what_it_waits_for(project, plane):
    """Something holds a piml object (a finalizer nobody removes): teardown ends at its bound and says what each
    object still waits for, the namespace's words included."""
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    kube = plane.kube()
    path = "/api/v1/namespaces/piml/configmaps/piml-runner"
    try:
        kube.request(
            "PATCH",
            path,
            body={"metadata": {"finalizers": ["example.com/hold"]}},
            content_type="application/merge-patch+json",
        )
        report = teardown_platform(cluster, project.kubeconfig, purge=True, timeout=45, poll=0.2)
        waits = report.waiting_for
        assert waits.get("ConfigMap piml/piml-runner") == "waiting for example.com/hold", waits
        namespace = report.waiting_for["Namespace piml"]
        assert "example.com/hold" in namespace  # the namespace controller's own words: what it still has
        assert report.as_dict()["waiting_for"] == report.waiting_for
    finally:
        kube.request(
            "PATCH", path, body={"metadata": {"finalizers": None}}, content_type="application/merge-patch+json"
        )
        kube.close()


def test_teardown_of_a_fault_tolerant_ray_waits_for_kuberays_redis_cleanup(project, plane):
    """With GCS fault tolerance the real KubeRay operator holds the RayCluster with a finalizer until its Redis
    cleanup Job has run (as the RayCluster's ServiceAccount, which must still be there: custom resources are
    deleted in the background). Teardown waits for it, within its bound, Redis still up meanwhile."""
    cluster, rendered = project.render({"ray": {"gcs_fault_tolerance": True}})
    deploy(cluster, project.kubeconfig, rendered, FAST)
    kube = plane.kube()
    try:
        ray = kube.get("/apis/ray.io/v1/namespaces/piml/rayclusters/ray")
        assert "ray.io/gcs-ft-redis-cleanup-finalizer" in ray["metadata"]["finalizers"]
        report = teardown_platform(cluster, project.kubeconfig, timeout=120, poll=0.2)
        assert not report.waiting_for and kube.get("/apis/ray.io/v1/namespaces/piml/rayclusters/ray") is None
        events = kube.request("GET", "/api/v1/namespaces/piml/events", {"fieldSelector": "involvedObject.name=ray"})[
            "items"
        ]
        assert "CreatedRedisCleanupJob" in {e["reason"] for e in events}  # the operator's own account of it
    finally:
        kube.close()
