"""k3s's HelmChart controller and the KubeRay operator, both REAL (addons.py), on the real control plane with the
stand-in nodes: piml's HelmChart kuberay-operator -> the helm-controller's Job helm-install-kuberay-operator,
whose pod the stand-in plays (chart_jobs.py: the chart's CRDs, then Succeeded; keda's too) -> the real job controller
completes the Job -> the RayCluster CRD is Established -> the KubeRay operator starts; piml's RayCluster -> the
operator makes the head pod and services -> the scheduler binds the pod, the stand-in runs it -> the operator
says `ready`. Then the HelmChart is deleted: the helm-delete Job completes and the HelmChart goes.
Every wait is bounded. Skipped only without Go."""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import pytest

from tests.controlplane.test_control_plane import GO, cp, until

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "tests" / "render" / "scenarios" / "pi5-3x8gb.yml"

pytestmark = pytest.mark.skipif(GO is None, reason="Go is not installed (needed to build the control plane)")


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    build = cp("build", timeout=3 * 3600)
    assert build.returncode == 0, build.stderr
    d = tmp_path_factory.mktemp("cp") / "plane"
    r = cp("up", str(d), "--nodes", "2", "--node-memory", "8Gi", "--arch", "arm64", timeout=300)
    assert r.returncode == 0, r.stderr
    yield d
    r = cp("down", str(d), "--keep-logs", timeout=60)  # logs stay in pytest's tmp dir for a failed run
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def k(plane):
    from kubernetes import config
    from kubernetes.dynamic import DynamicClient

    api = config.new_client_from_config(config_file=str(plane / "kubeconfig"))
    yield api, DynamicClient(api)
    api.close()


@pytest.fixture(scope="module")
def rendered():
    """pi5-3x8gb with the default settings, rendered as `piml up` renders it."""
    from piml.config import PimlConfig
    from piml.inventory import load_inventory
    from piml.plan import make_plan
    from piml.project import Cluster, ProjectPaths
    from piml.render import render_platform
    from piml.secrets import load_or_create

    root = Path(tempfile.mkdtemp(prefix="piml-addons-")) / "lab"
    root.mkdir()
    cluster = Cluster(ProjectPaths(root, SCENARIO), load_inventory(SCENARIO), PimlConfig.model_validate({}))
    out = render_platform(cluster, make_plan(cluster), load_or_create(root / ".piml"))
    return {(o["kind"], o["metadata"]["name"]): o for r in out for o in r.objects}


def apply(dyn, obj: dict) -> dict:
    """Server-side apply, as piml does (field manager piml)."""
    res = until(f"{obj['apiVersion']} {obj['kind']} served", lambda: _resource(dyn, obj), 30)
    meta = obj["metadata"]
    return res.server_side_apply(
        body=obj, name=meta["name"], namespace=meta.get("namespace"), field_manager="piml", force_conflicts=True
    ).to_dict()


def _resource(dyn, obj):
    from kubernetes.dynamic.exceptions import ResourceNotFoundError

    try:
        return dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    except ResourceNotFoundError:
        dyn.invalidate_cache()
        return None


def get(dyn, path: str) -> dict | None:
    from kubernetes.dynamic.exceptions import NotFoundError

    try:
        return dyn.request("GET", path, _request_timeout=10).to_dict()
    except NotFoundError:
        return None


def condition(obj: dict | None, type_: str) -> bool:
    return any(
        c.get("type") == type_ and c.get("status") == "True"
        for c in ((obj or {}).get("status") or {}).get("conditions") or []
    )


def test_helm_install_jobs_complete_and_bring_the_crds(k, rendered):
    api, dyn = k
    t0 = time.monotonic()
    chart = apply(dyn, rendered[("HelmChart", "kuberay-operator")])
    assert chart["metadata"]["namespace"] == "kube-system"
    apply(dyn, rendered[("HelmChart", "keda")])  # its install brings the ScaledJob CRD (no KEDA operator runs)
    job_path = "/apis/batch/v1/namespaces/kube-system/jobs/helm-install-kuberay-operator"
    job = until(
        "the real job controller completes helm-install-kuberay-operator",
        lambda: (lambda j: j if condition(j, "Complete") else None)(get(dyn, job_path)),
        45,
    )
    assert job["status"]["succeeded"] == 1
    # The Job is the helm-controller's, running klipper-helm as the chart's ServiceAccount.
    pod_spec = job["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "helm-kuberay-operator"
    assert "klipper-helm" in pod_spec["containers"][0]["image"]
    assert pod_spec["containers"][0]["args"][:3] == ["install", "--namespace", "kuberay-system"]
    live = get(dyn, "/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts/kuberay-operator")
    assert live["metadata"]["annotations"]["helmcharts.cattle.io/managed-by"] == "helm-controller"
    assert live["status"]["jobName"] == "helm-install-kuberay-operator"
    assert condition(live, "JobCreated") and not condition(live, "Failed")
    for crd in ("rayclusters.ray.io", "rayjobs.ray.io", "scaledjobs.keda.sh"):
        until(
            f"CRD {crd} Established",
            lambda crd=crd: condition(
                get(dyn, f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd}"), "Established"
            ),
            20,
        )
    assert get(dyn, "/api/v1/namespaces/kuberay-system") is not None  # createNamespace: true
    keda_job = "/apis/batch/v1/namespaces/kube-system/jobs/helm-install-keda"
    until("helm-install-keda Complete", lambda: condition(get(dyn, keda_job), "Complete"), 20)
    print(f"HelmChart -> CRDs Established in {time.monotonic() - t0:.1f} s")


def test_the_operator_makes_piml_rayclusters_head_and_says_ready(k, rendered):
    api, dyn = k
    t0 = time.monotonic()
    rc = copy.deepcopy(rendered[("RayCluster", "ray")])
    ns = rc["metadata"]["namespace"]
    # The stand-in nodes are node-1, node-2, not the scenario's pi1..pi3: the head's pin moves to node-2.
    selector = rc["spec"]["headGroupSpec"]["template"]["spec"]["nodeSelector"]
    assert selector.get("kubernetes.io/hostname")
    selector["kubernetes.io/hostname"] = "node-2"
    apply(dyn, rendered[("Namespace", ns)])
    apply(dyn, rendered[("Secret", "ray-auth")])
    apply(dyn, rc)

    def head_running():
        pods = get(dyn, f"/api/v1/namespaces/{ns}/pods?labelSelector=ray.io/cluster=ray,ray.io/node-type=head")
        items = (pods or {}).get("items") or []
        return (
            items[0]
            if items and items[0]["status"].get("phase") == "Running" and condition(items[0], "Ready")
            else None
        )

    head = until("the operator's head pod Running and Ready", head_running, 60)
    assert head["spec"]["nodeName"] == "node-2"
    assert any(o["kind"] == "RayCluster" and o["name"] == "ray" for o in head["metadata"]["ownerReferences"])
    live = until(
        "RayCluster state ready",
        lambda: (lambda o: o if (o.get("status") or {}).get("state") == "ready" else None)(
            get(dyn, f"/apis/ray.io/v1/namespaces/{ns}/rayclusters/ray")
        ),
        30,
    )
    assert live["status"]["head"]["podIP"] == head["status"]["podIP"]
    svcs = [
        s["metadata"]["name"]
        for s in get(dyn, f"/api/v1/namespaces/{ns}/services?labelSelector=ray.io/cluster=ray")["items"]
    ]
    assert any(s.startswith("ray-head") for s in svcs), svcs
    print(f"RayCluster -> head Running, state ready in {time.monotonic() - t0:.1f} s")


def test_deleting_the_helmchart_runs_helm_delete_and_it_goes(k):
    api, dyn = k
    path = "/apis/helm.cattle.io/v1/namespaces/kube-system/helmcharts/kuberay-operator"
    dyn.request("DELETE", path, _request_timeout=10)
    until("the HelmChart gone (after its helm-delete Job succeeded)", lambda: get(dyn, path) is None, 45)
    job = get(dyn, "/apis/batch/v1/namespaces/kube-system/jobs/helm-delete-kuberay-operator")
    assert job is None or job["status"].get("succeeded") == 1
