"""Apply against the real control plane: dependency order, CRD wait, idempotence, prune."""

from __future__ import annotations

import json
import subprocess

import pytest

from piml.errors import EXIT_FAILED, PimlError
from piml.kube.deploy import DeployError, deploy
from piml.kube.wait import Timeouts
from tests.platform.conftest import FAST, Project, api_gone, purge


def project_objects(kube, project: str = "lab") -> dict[str, dict]:
    """Every live object of the project, by 'Kind namespace/name', read through piml's own listing."""
    from piml.kube.discovery import Discovery
    from piml.kube.prune import project_objects as live

    return {
        f"{o['kind']} {o['metadata'].get('namespace', '')}/{o['metadata']['name']}": o
        for o in live(kube, Discovery(kube), project)
    }


def pimls_writes(obj: dict) -> tuple:
    """What only a write by piml moves: the generation and the time of piml's own managedFields entry."""
    mine = [(m["operation"], m.get("time")) for m in obj["metadata"].get("managedFields", []) if m["manager"] == "piml"]
    return obj["metadata"].get("generation"), mine


def test_applies_in_dependency_order(project, plane):
    cluster, rendered = project.render()
    mark = len(plane.requests())
    report = deploy(cluster, project.kubeconfig, rendered, FAST)
    objects = [o for r in rendered for o in r.objects]
    assert report.ok and report.created == len(objects) and report.changed == 0
    assert {str(r) for r in report.ready} >= {"Deployment piml/mlflow", "RayCluster piml/ray", "Deployment piml/redis"}

    # The order the API server received piml's applies in (its audit log).
    applies = [r for r in plane.requests()[mark:] if r.verb == "patch" and "fieldManager=piml" in r.uri]
    position = {(r.resource, r.name): i for i, r in enumerate(applies)}
    namespace = position["namespaces", "piml"]
    charts = [position["helmcharts", n] for n in ("kuberay-operator", "keda")]
    namespaced = [i for i, r in enumerate(applies) if r.namespace == "piml" and r.resource != "namespaces"]
    assert namespace < min(charts) and namespace < min(namespaced)
    assert max(charts) < position["rayclusters", "ray"] and max(charts) < position["scaledjobs", "piml-runner"]
    assert all(r.code in (200, 201) for r in applies)

    # Server-side apply with piml as the field manager; Secret values arrive as data, not in any other object.
    kube = plane.kube()
    try:
        mlflow = kube.get("/apis/apps/v1/namespaces/piml/deployments/mlflow")
        assert ("piml", "Apply") in {(m["manager"], m["operation"]) for m in mlflow["metadata"]["managedFields"]}
        secret = kube.get("/api/v1/namespaces/piml/secrets/redis")
        assert "stringData" not in secret and set(secret["data"]) == {"password"}
    finally:
        kube.close()


def test_second_deploy_changes_nothing(project, plane):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    kube = plane.kube()
    try:
        before = {k: pimls_writes(o) for k, o in project_objects(kube).items()}
        report = deploy(cluster, project.kubeconfig, rendered, FAST)
        assert (report.created, report.changed, report.unchanged) == (0, 0, len(report.applied))
        assert not report.pruned
        assert {k: pimls_writes(o) for k, o in project_objects(kube).items()} == before
    finally:
        kube.close()


def test_a_changed_setting_changes_only_its_objects(project, plane):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    cluster, rendered = project.render({"dask": {"extra_pip_packages": ["xgboost"]}})
    report = deploy(cluster, project.kubeconfig, rendered, FAST)
    changed = {str(a.ref) for a in report.applied if a.action == "changed"}
    assert changed == {"Deployment piml/dask-scheduler", "Deployment piml/dask-worker-arm64"}
    kube = plane.kube()
    try:
        assert kube.get("/apis/apps/v1/namespaces/piml/deployments/dask-scheduler")["metadata"]["generation"] == 2
    finally:
        kube.close()


def test_switching_ray_off_prunes_it(project, plane):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)

    mark = len(plane.requests())
    cluster, rendered = project.render({"ray": {"enabled": False}})
    report = deploy(cluster, project.kubeconfig, rendered, FAST)
    pruned = {str(r) for r in report.pruned}
    assert pruned == {
        "RayCluster piml/ray",
        "HelmChart kube-system/kuberay-operator",
        "Middleware piml/strip-ray",
        "Secret piml/ray-auth",
    }
    kube = plane.kube()
    try:
        live = project_objects(kube)
        assert "RayCluster piml/ray" not in live and "HelmChart kube-system/keda" in live  # the other chart stays
    finally:
        kube.close()
    deletes = [r.resource for r in plane.requests()[mark:] if r.verb == "delete"]
    assert deletes.index("rayclusters") < deletes.index("helmcharts")  # the operator outlives its resource
    # The Ingress loses its /ray path: changed, not deleted (the plan may move other parts too).
    assert "Ingress piml/piml-ui" in {str(a.ref) for a in report.applied if a.action == "changed"}
    again = deploy(cluster, project.kubeconfig, rendered, FAST)
    assert (again.changed, again.created, again.pruned) == (0, 0, [])


def test_switching_the_queue_off_keeps_its_volume(project, plane):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    cluster, rendered = project.render({"queue": {"enabled": False}})
    report = deploy(cluster, project.kubeconfig, rendered, FAST)
    assert "Deployment piml/redis" in {str(r) for r in report.pruned}
    assert {str(r) for r in report.kept} == {"PersistentVolumeClaim piml/redis-data"}
    kube = plane.kube()
    try:
        claim = kube.get("/api/v1/namespaces/piml/persistentvolumeclaims/redis-data")
        assert claim and claim["status"]["phase"] == "Bound"  # the data's volume is still there
        assert kube.get("/apis/apps/v1/namespaces/piml/deployments/redis") is None
    finally:
        kube.close()


def test_objects_of_other_projects_are_left_alone(project, plane):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    other = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "theirs",
            "namespace": "piml",
            "labels": {"app.kubernetes.io/managed-by": "piml", "piml.io/project": "another-lab"},
        },
        "data": {"a": "b"},
    }
    kube = plane.kube()
    try:
        kube.request("POST", "/api/v1/namespaces/piml/configmaps", body=other)
        report = deploy(cluster, project.kubeconfig, rendered, FAST)
        assert not report.pruned and kube.get("/api/v1/namespaces/piml/configmaps/theirs")
    finally:
        kube.close()


def test_crds_that_never_come_are_a_plain_error(tmp_path, own_plane):
    """A fresh cluster whose chart installs fail (the helm-install pods crash, as when k3s cannot fetch a chart):
    the charts' kinds are never served, and piml says where to look, within its bound."""
    plane = own_plane()
    project = Project(tmp_path / "lab", plane)
    try:
        for chart in ("kuberay-operator", "keda"):
            plane.inject(f"helm-install-{chart}", "crash", logs=["Error: failed to fetch chart: no route to host"])
        cluster, rendered = project.render()
        with pytest.raises(DeployError) as caught:
            deploy(
                cluster, project.kubeconfig, rendered, Timeouts(crds=5.0, ready=5.0, total=60.0, poll=0.2, request=10.0)
            )
        assert caught.value.exit_code == EXIT_FAILED
        lines = [str(p) for p in caught.value.problems]
        charts = {"ray.io/v1": "kuberay-operator", "keda.sh/v1alpha1": "keda"}
        waited_for = sorted(
            {(o["apiVersion"], o["kind"]) for r in rendered for o in r.objects if o["apiVersion"] in charts}
        )
        assert ("ray.io/v1", "RayCluster") in waited_for
        assert lines == [
            f"HelmChart kube-system/{charts[v]}: {k} ({v}) is still not served (no CRD yet); "
            f"see how the chart install went: `kubectl -n kube-system logs job/helm-install-{charts[v]}` "
            "(k3s fetches the chart from its repository on the internet)"
            for v, k in waited_for
        ]
        assert "rayclusters" not in {r.resource for r in plane.requests() if r.verb == "patch"}
        assert caught.value.report.created == len([o for r in rendered for o in r.objects]) - len(waited_for)
        # And the log the hint points at says why (through the API server, from the node).
        kube = plane.kube()
        try:
            pods = kube.request(
                "GET",
                "/api/v1/namespaces/kube-system/pods",
                {"labelSelector": "batch.kubernetes.io/job-name=helm-install-keda"},
            )["items"]
            log = kube.request(
                "GET",
                f"/api/v1/namespaces/kube-system/pods/{pods[0]['metadata']['name']}/log",
                {"previous": "true"},
                text=True,
            )
            assert "failed to fetch chart" in log
        finally:
            kube.close()
    finally:
        purge(project)


def test_an_unreachable_api_is_one_plain_line(project):
    cluster, rendered = project.render()
    with api_gone(project) as server:
        with pytest.raises(PimlError) as caught:
            deploy(cluster, project.kubeconfig, rendered, FAST)
    assert caught.value.exit_code == EXIT_FAILED
    assert len(caught.value.problems) == 1
    assert f"cannot reach the Kubernetes API at {server}" in str(caught.value)


def test_a_missing_kubeconfig_says_how_to_get_one(project):
    text = project.kubeconfig.read_text()
    project.kubeconfig.unlink()
    cluster, rendered = project.render()
    try:
        with pytest.raises(PimlError) as caught:
            deploy(cluster, project.kubeconfig, rendered, FAST)
        assert "no kubeconfig here; run `piml up`" in str(caught.value)
    finally:
        project.kubeconfig.write_text(text)


@pytest.mark.parametrize(
    "settings",
    [
        {
            "mlflow": {"backend": "postgresql", "artifacts": "minio"},
            "queue": {"kind": "rabbitmq"},
            "ray": {"gcs_fault_tolerance": True},
        },
        {"ray": {"enabled": False}, "dask": {"enabled": False}, "queue": {"enabled": False}},
    ],
    ids=["postgres-minio-rabbitmq", "mlflow-only"],
)
def test_other_configurations_converge(project, settings):
    cluster, rendered = project.render(settings)
    first = deploy(cluster, project.kubeconfig, rendered, FAST)
    assert first.ok and first.created == len(first.applied)
    second = deploy(cluster, project.kubeconfig, rendered, FAST)
    assert (second.created, second.changed, second.pruned) == (0, 0, [])


def test_up_into_a_namespace_still_terminating_says_so(project, plane):
    """A teardown that did not finish (something in the namespace waits for a finalizer nobody removes): the real
    API server refuses new objects there with a 403, which is not about credentials."""
    kube = plane.kube()
    held = "/api/v1/namespaces/piml/configmaps/held"
    try:
        kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": "piml"}})
        kube.request(
            "POST",
            "/api/v1/namespaces/piml/configmaps",
            body={"metadata": {"name": "held", "finalizers": ["example.com/hold"]}},
        )
        kube.request("DELETE", "/api/v1/namespaces/piml")
        cluster, rendered = project.render()
        with pytest.raises(PimlError) as caught:
            deploy(cluster, project.kubeconfig, rendered, FAST)
        (problem,) = caught.value.problems
        assert "credentials" not in str(problem)
        assert str(problem).startswith("namespace piml: is still being deleted (Terminating)"), str(problem)
        assert "kubectl get namespace piml -o yaml" in problem.fix
    finally:
        kube.request(
            "PATCH", held, body={"metadata": {"finalizers": None}}, content_type="application/merge-patch+json"
        )
        kube.close()


def test_a_volume_size_change_is_one_line_with_the_fix(project):
    """k3s's local-path storage cannot resize: the real API server's admission refuses the claim's new size."""
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    cluster, rendered = project.render({"mlflow": {"storage": "20Gi"}})
    with pytest.raises(PimlError) as caught:
        deploy(cluster, project.kubeconfig, rendered, FAST)
    (problem,) = caught.value.problems
    assert str(problem) == (
        "PersistentVolumeClaim piml/mlflow-data: its size cannot change from 10Gi: k3s's local-path storage does not "
        "resize volumes; set the size back to 10Gi in piml.yaml (mlflow.storage); for a bigger volume, back up its "
        "data, delete the claim (kubectl -n piml delete pvc mlflow-data: its data is lost) and run piml up again"
    )


def test_an_immutable_field_piml_now_renders_differently_is_one_line_with_the_fix(project, plane):
    """As after an upgrade of piml that labels a component's pods differently: a Deployment's selector is
    immutable, and the real API server answers 422."""
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    for r in rendered:
        for o in r.objects:
            if o["kind"] == "Deployment" and o["metadata"]["name"] == "dask-scheduler":
                o["spec"]["selector"]["matchLabels"]["piml.io/generation"] = "2"
                o["spec"]["template"]["metadata"]["labels"]["piml.io/generation"] = "2"
    with pytest.raises(PimlError) as caught:
        deploy(cluster, project.kubeconfig, rendered, FAST)
    (problem,) = caught.value.problems
    assert str(problem) == (
        "Deployment piml/dask-scheduler: the cluster refused it: spec.selector cannot change once Deployment exists "
        "(the API server keeps it immutable), and this piml renders it differently; delete it and run piml up again, "
        "which makes it anew: kubectl -n piml delete deployment dask-scheduler"
    )


def test_a_users_kubectl_change_to_a_piml_field_is_taken_back_and_their_own_fields_stay(project, plane, kubectl):
    """A second field manager: a user scales Dask's workers with `kubectl scale`, adds a label of their own with
    `kubectl label` and an annotation with `kubectl apply` (client-side, the real kubectl). piml applies with force:
    the fields it renders are its own and come back to what piml.yaml says (reported as changed); a field only the
    user set stays theirs."""
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    path = "/apis/apps/v1/namespaces/piml/deployments/dask-worker-arm64"
    kube = plane.kube()

    def user(*args: str, stdin: str | None = None) -> None:
        done = subprocess.run(
            [str(kubectl), f"--kubeconfig={project.kubeconfig}", "-n", "piml", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr

    try:
        live = kube.get(path)
        want = live["spec"]["replicas"]
        user("scale", "deployment/dask-worker-arm64", f"--replicas={want + 2}")
        user("label", "deployment/dask-worker-arm64", "team=vision")
        mine = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "dask-worker-arm64", "namespace": "piml", "annotations": {"owner": "vision"}},
            "spec": {"selector": live["spec"]["selector"], "template": live["spec"]["template"]},
        }
        user("apply", "-f", "-", stdin=json.dumps(mine))
        assert kube.get(path)["spec"]["replicas"] == want + 2
        report = deploy(cluster, project.kubeconfig, rendered, FAST)
        assert "Deployment piml/dask-worker-arm64" in {str(a.ref) for a in report.applied if a.action == "changed"}
        live = kube.get(path)
        assert live["spec"]["replicas"] == want
        assert live["metadata"]["labels"]["team"] == "vision"
        assert live["metadata"]["annotations"]["owner"] == "vision"
        owners = {m["manager"] for m in live["metadata"]["managedFields"]}
        assert {"piml", "kubectl-label", "kubectl-client-side-apply"} <= owners, owners
        # and piml's next run leaves the user's fields alone: nothing of its own changed
        assert not [a for a in deploy(cluster, project.kubeconfig, rendered, FAST).applied if a.action == "changed"]
    finally:
        kube.close()
