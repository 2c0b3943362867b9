"""Apply against the Kubernetes API stand-in: dependency order, CRD wait, idempotence, prune."""

from __future__ import annotations

import json

import pytest

from piml.errors import EXIT_FAILED, PimlError
from piml.kube.deploy import DeployError, deploy
from tests.platform.conftest import FAST, SHORT


def test_applies_in_dependency_order(project, kubeapi):
    cluster, rendered = project.render()
    report = deploy(cluster, project.kubeconfig, rendered, FAST)
    objects = [o for r in rendered for o in r.objects]
    assert report.ok and report.created == len(objects) and report.changed == 0
    assert {str(r) for r in report.ready} >= {"Deployment piml/mlflow", "RayCluster piml/ray", "Deployment piml/redis"}

    history = kubeapi.history
    position = {(what, kind, name): i for i, (what, kind, _, name) in enumerate(history)}
    namespace = position["apply", "Namespace", "piml"]
    charts = [position["apply", "HelmChart", n] for n in ("kuberay-operator", "keda")]
    crd = position["established", "CustomResourceDefinition", "rayclusters.ray.io"]
    raycluster = position["apply", "RayCluster", "ray"]
    namespaced = [i for i, (what, kind, ns, _) in enumerate(history) if what == "apply" and ns == "piml"]
    assert namespace < min(charts) and namespace < min(namespaced)
    assert max(charts) < crd < raycluster  # the RayCluster only once its CRD is Established

    # Server-side apply with piml as the field manager; Secret values arrive as data, not in any other object.
    mlflow = kubeapi.get("deployments", "piml", "mlflow")
    assert mlflow["metadata"]["managedFields"][0]["manager"] == "piml"
    assert ("PATCH", "fieldManager=piml") in {(m, p.partition("?")[2].split("&")[0]) for m, p in kubeapi.requests}
    secret = kubeapi.get("secrets", "piml", "redis")
    assert "stringData" not in secret and set(secret["data"]) == {"password"}


def test_second_deploy_changes_nothing(project, kubeapi):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    versions = {key: obj["metadata"]["resourceVersion"] for key, obj in kubeapi.objects.items() if key[0] != "pods"}
    applies = sum(1 for h in kubeapi.history if h[0] == "apply")

    report = deploy(cluster, project.kubeconfig, rendered, FAST)
    assert (report.created, report.changed, report.unchanged) == (0, 0, len(report.applied))
    assert not report.pruned
    assert sum(1 for h in kubeapi.history if h[0] == "apply") == applies
    assert {key: obj["metadata"]["resourceVersion"] for key, obj in kubeapi.objects.items() if key[0] != "pods"} == versions


def test_a_changed_setting_changes_only_its_objects(project, kubeapi):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    cluster, rendered = project.render({"dask": {"extra_pip_packages": ["xgboost"]}})
    report = deploy(cluster, project.kubeconfig, rendered, FAST)
    changed = {str(a.ref) for a in report.applied if a.action == "changed"}
    assert changed == {"Deployment piml/dask-scheduler", "Deployment piml/dask-worker-arm64"}
    assert kubeapi.get("deployments", "piml", "dask-scheduler")["metadata"]["generation"] == 2


def test_switching_ray_off_prunes_it(project, kubeapi):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    assert "ray" in kubeapi.names("rayclusters", "piml")

    cluster, rendered = project.render({"ray": {"enabled": False}})
    report = deploy(cluster, project.kubeconfig, rendered, FAST)
    pruned = {str(r) for r in report.pruned}
    assert pruned == {"RayCluster piml/ray", "HelmChart kube-system/kuberay-operator", "Middleware piml/strip-ray", "Secret piml/ray-auth"}
    assert not kubeapi.names("rayclusters") and "kuberay-operator" not in kubeapi.names("helmcharts")
    assert "keda" in kubeapi.names("helmcharts")  # the other chart stays
    order = [h[1] for h in kubeapi.history if h[0] == "delete"]
    assert order.index("RayCluster") < order.index("HelmChart")  # the operator outlives its resource
    # The Ingress loses its /ray path: changed, not deleted (the plan may move other parts too).
    assert "Ingress piml/piml-ui" in {str(a.ref) for a in report.applied if a.action == "changed"}
    again = deploy(cluster, project.kubeconfig, rendered, FAST)
    assert (again.changed, again.created, again.pruned) == (0, 0, [])


def test_switching_the_queue_off_keeps_its_volume(project, kubeapi):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    cluster, rendered = project.render({"queue": {"enabled": False}})
    report = deploy(cluster, project.kubeconfig, rendered, FAST)
    assert "Deployment piml/redis" in {str(r) for r in report.pruned}
    assert {str(r) for r in report.kept} == {"PersistentVolumeClaim piml/redis-data"}
    assert "redis-data" in kubeapi.names("persistentvolumeclaims", "piml")
    assert "redis" not in kubeapi.names("deployments")


def test_objects_of_other_projects_are_left_alone(project, kubeapi):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "theirs", "namespace": "piml", "labels": {
        "app.kubernetes.io/managed-by": "piml", "piml.io/project": "another-lab"}}, "data": {"a": "b"}}
    kubeapi.handle("POST", "/api/v1/namespaces/piml/configmaps", json.dumps(other).encode(), "application/json")
    report = deploy(cluster, project.kubeconfig, rendered, FAST)
    assert not report.pruned and "theirs" in kubeapi.names("configmaps", "piml")


def test_crds_that_never_come_are_a_plain_error(make_api, make_project):
    api = make_api(crd_delay=3600)
    project = make_project(api)
    cluster, rendered = project.render()
    with pytest.raises(DeployError) as caught:
        deploy(cluster, project.kubeconfig, rendered, SHORT)
    assert caught.value.exit_code == EXIT_FAILED
    lines = [str(p) for p in caught.value.problems]
    charts = {"ray.io/v1": "kuberay-operator", "keda.sh/v1alpha1": "keda"}
    waited_for = sorted({(o["apiVersion"], o["kind"]) for r in rendered for o in r.objects if o["apiVersion"] in charts})
    assert ("ray.io/v1", "RayCluster") in waited_for
    assert lines == [f"HelmChart kube-system/{charts[v]}: {k} ({v}) is still not served (no CRD yet); "
                     f"see how the chart install went: `kubectl -n kube-system logs job/helm-install-{charts[v]}` "
                     "(k3s fetches the chart from its repository on the internet)" for v, k in waited_for]
    assert "RayCluster" not in {h[1] for h in api.history if h[0] == "apply"}
    assert caught.value.report.created == len([o for r in rendered for o in r.objects]) - len(waited_for)


def test_an_unreachable_api_is_one_plain_line(project, tmp_path):
    import socket

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cluster, rendered = project.render()
    text = project.kubeconfig.read_text().replace(project.api.url, f"http://127.0.0.1:{port}")
    project.kubeconfig.write_text(text)
    with pytest.raises(PimlError) as caught:
        deploy(cluster, project.kubeconfig, rendered, FAST)
    assert caught.value.exit_code == EXIT_FAILED
    assert len(caught.value.problems) == 1
    assert f"cannot reach the Kubernetes API at http://127.0.0.1:{port}" in str(caught.value)


def test_a_missing_kubeconfig_says_how_to_get_one(project):
    project.kubeconfig.unlink()
    cluster, rendered = project.render()
    with pytest.raises(PimlError) as caught:
        deploy(cluster, project.kubeconfig, rendered, FAST)
    assert "no kubeconfig here; run `piml up`" in str(caught.value)


@pytest.mark.parametrize("settings", [
    {"mlflow": {"backend": "postgresql", "artifacts": "minio"}, "queue": {"kind": "rabbitmq"}, "ray": {"gcs_fault_tolerance": True}},
    {"ray": {"enabled": False}, "dask": {"enabled": False}, "queue": {"enabled": False}},
], ids=["postgres-minio-rabbitmq", "mlflow-only"])
def test_other_configurations_converge(project, kubeapi, settings):
    cluster, rendered = project.render(settings)
    first = deploy(cluster, project.kubeconfig, rendered, FAST)
    assert first.ok and first.created == len(first.applied)
    second = deploy(cluster, project.kubeconfig, rendered, FAST)
    assert (second.created, second.changed, second.pruned) == (0, 0, [])
