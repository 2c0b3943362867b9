"""What k3s ships beside Kubernetes that piml's platform needs, on the real control plane (see README.md):

  - local-path storage: the objects of k3s's local-storage.yaml and the REAL local-path-provisioner (local_path.py).
    A PVC of class local-path waits for its first consumer (the real PV controller); a Deployment using it -> the
    real scheduler picks a node and says so on the claim -> the provisioner makes its helper pod on that node, which
    the kubelet stand-in plays (the directory under DIR/run/<node>/) -> the provisioner makes the PV with node
    affinity to that node -> the claim binds -> the pod is scheduled there and runs. Deleting the claim (reclaim
    Delete) runs the delete helper pod, and the PV goes.
  - Traefik's CRDs, REAL (traefik_crds.py: Traefik's own files from its Go module), Established; a Middleware with a
    misspelled field is refused under fieldValidation=Strict.
And `up --no-local-path --no-traefik-crds` leaves both out. Every wait is bounded. Skipped only without Go.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.controlplane.objects import deployment
from tests.controlplane.test_control_plane import GO, alive, cp, raw, until

pytestmark = pytest.mark.skipif(GO is None, reason="Go is not installed (needed to build the control plane)")

NS = "default"


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    build = cp("build", timeout=3 * 3600)
    assert build.returncode == 0, build.stderr
    d = tmp_path_factory.mktemp("cp") / "plane"
    r = cp("up", str(d), "--nodes", "2", "--node-memory", "8Gi", "--arch", "arm64", "--no-kuberay", timeout=300)
    assert r.returncode == 0, r.stderr
    yield d
    r = cp("down", str(d), "--keep-logs", timeout=60)  # logs stay in pytest's tmp dir for a failed run
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def api(plane):
    from kubernetes import client, config

    c = config.new_client_from_config(config_file=str(plane / "kubeconfig"))
    yield client.CoreV1Api(c), client.AppsV1Api(c), c
    c.close()


def test_local_path_is_set_up_as_k3s_sets_it_up(plane, api):
    from kubernetes import client

    core, _, c = api
    sc = client.StorageV1Api(c).read_storage_class("local-path", _request_timeout=10)
    assert sc.metadata.annotations["storageclass.kubernetes.io/is-default-class"] == "true"
    assert (sc.provisioner, sc.volume_binding_mode, sc.reclaim_policy) == (
        "rancher.io/local-path",
        "WaitForFirstConsumer",
        "Delete",
    )
    cm = core.read_namespaced_config_map("local-path-config", "kube-system", _request_timeout=10)
    assert json.loads(cm.data["config.json"]) == {
        "nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["/var/lib/rancher/k3s/storage"]}]
    }
    assert {"setup", "teardown", "helperPod.yaml"} <= set(cm.data)
    # The provisioner runs as its ServiceAccount (k3s's ClusterRole authorizes it), not as an admin.
    state = json.loads((plane / "controlplane.json").read_text())
    assert alive(state["procs"]["local-path-provisioner"]["pid"])
    kubeconfig = yaml.safe_load((plane / "kubeconfigs" / "local-path-provisioner.yaml").read_text())
    assert "token" in kubeconfig["users"][0]["user"] and "client-certificate-data" not in kubeconfig["users"][0]["user"]


def _claim(name: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": {
            "storageClassName": "local-path",
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "2Gi"}},
        },
    }


def _deployment(name: str, claim: str) -> dict:
    container = {
        "name": "redis",
        "image": "redis:7.4",
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
    }
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": claim}}
    return deployment(name, {"containers": [container], "volumes": [volume]})


def _node_dir(plane: Path, node: str, pv) -> Path:
    return plane / "run" / node / pv.spec.local.path.lstrip("/")


def test_a_claim_is_provisioned_on_the_node_the_scheduler_chose_and_deleted_with_its_volume(plane, api):
    from kubernetes.client.rest import ApiException

    core, apps, _ = api
    core.create_namespaced_persistent_volume_claim(NS, _claim("data"), _request_timeout=10)
    time.sleep(2)  # WaitForFirstConsumer: nothing happens before a pod uses the claim
    pvc = core.read_namespaced_persistent_volume_claim("data", NS, _request_timeout=10)
    assert pvc.status.phase == "Pending" and not pvc.spec.volume_name
    apps.create_namespaced_deployment(NS, _deployment("store", "data"), _request_timeout=10)

    def running():
        pods = core.list_namespaced_pod(NS, label_selector="app=store", _request_timeout=10).items
        return [p for p in pods if p.status.phase == "Running"]

    pod = until("the Deployment's pod Running", running, 90)[0]
    pvc = core.read_namespaced_persistent_volume_claim("data", NS, _request_timeout=10)
    assert pvc.status.phase == "Bound", pvc.status
    # The real scheduler chose the node and said so on the claim; the provisioner provisioned there.
    node = pvc.metadata.annotations["volume.kubernetes.io/selected-node"]
    assert pod.spec.node_name == node
    pv = core.read_persistent_volume(pvc.spec.volume_name, _request_timeout=10)
    assert pv.metadata.annotations["pv.kubernetes.io/provisioned-by"] == "rancher.io/local-path"
    terms = pv.spec.node_affinity.required.node_selector_terms
    assert [(e.key, e.operator, e.values) for t in terms for e in t.match_expressions] == [
        ("kubernetes.io/hostname", "In", [node])
    ]
    assert pv.spec.local.path == f"/var/lib/rancher/k3s/storage/{pv.metadata.name}_{NS}_data"  # k3s: `local`
    assert pv.spec.persistent_volume_reclaim_policy == "Delete" and pv.spec.capacity["storage"] == "2Gi"
    assert pv.spec.claim_ref.name == "data" and pv.status.phase == "Bound"
    # The helper pod ran on that node (the stand-in made the directory there) and was deleted by the provisioner.
    assert _node_dir(plane, node, pv).is_dir()

    def no_helper_pod():
        pods = core.list_namespaced_pod("kube-system", _request_timeout=10).items
        return not [p for p in pods if p.metadata.name.startswith("helper-pod-")]

    until("the helper pod deleted", no_helper_pod, 30)

    # Reclaim policy Delete: the claim goes -> the PV is released -> the delete helper pod -> the PV goes.
    apps.delete_namespaced_deployment("store", NS, _request_timeout=10)
    until("the pod gone", lambda: not core.list_namespaced_pod(NS, label_selector="app=store").items, 60)
    core.delete_namespaced_persistent_volume_claim("data", NS, _request_timeout=10)

    def pv_gone():
        try:
            core.read_persistent_volume(pv.metadata.name, _request_timeout=10)
            return False
        except ApiException as e:
            return e.status == 404

    until("the PV deleted", pv_gone, 60)
    assert not _node_dir(plane, node, pv).exists()
    log = (plane / "logs" / "local-path-provisioner.log").read_text()
    assert f"Volume {pv.metadata.name} has been deleted on {node}:" in log


def test_traefiks_crds_are_established_with_traefiks_schema(api):
    from kubernetes import client

    from tests.controlplane import traefik_crds

    _, _, c = api
    ext = client.ApiextensionsV1Api(c)
    files = traefik_crds.crd_files(traefik_crds.module_dir())
    assert len(files) >= 10
    for f in files:
        want = yaml.safe_load(f.read_text())
        live = ext.read_custom_resource_definition(want["metadata"]["name"], _request_timeout=10)
        assert any(x.type == "Established" and x.status == "True" for x in live.status.conditions)
        # The schema served is the one in Traefik's file (not a permissive stand-in).
        live_raw = raw(c, "GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{want['metadata']['name']}")
        assert [v["schema"] for v in live_raw[1]["spec"]["versions"]] == [v["schema"] for v in want["spec"]["versions"]]


def test_a_misspelled_middleware_field_is_refused(api):
    _, _, c = api

    def middleware(name, spec):
        return {"apiVersion": "traefik.io/v1alpha1", "kind": "Middleware", "metadata": {"name": name}, "spec": spec}

    def post(body):
        return raw(
            c, "POST", f"/apis/traefik.io/v1alpha1/namespaces/{NS}/middlewares", {"fieldValidation": "Strict"}, body
        )

    status, body = post(middleware("typo", {"stripPrefix": {"prefixez": ["/ray"]}}))
    assert status == 400 and 'unknown field "spec.stripPrefix.prefixez"' in body["message"], body
    status, body = post(middleware("typo", {"stripPrefixx": {"prefixes": ["/ray"]}}))
    assert status == 400 and 'unknown field "spec.stripPrefixx"' in body["message"], body
    status, body = post(middleware("right", {"stripPrefix": {"prefixes": ["/ray"]}}))
    assert status == 201, body


def test_up_without_local_path_and_traefik_crds(tmp_path):
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    d = tmp_path / "bare"
    r = cp("up", str(d), "--nodes", "1", "--no-kuberay", "--no-local-path", "--no-traefik-crds", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    try:
        state = json.loads(r.stdout)
        assert "local-path-provisioner" not in state["procs"]
        c = config.new_client_from_config(config_file=str(d / "kubeconfig"))
        try:
            assert client.StorageV1Api(c).list_storage_class(_request_timeout=10).items == []
            with pytest.raises(ApiException) as info:
                client.ApiextensionsV1Api(c).read_custom_resource_definition(
                    "middlewares.traefik.io", _request_timeout=10
                )
            assert info.value.status == 404
        finally:
            c.close()
    finally:
        assert cp("down", str(d), timeout=60).returncode == 0
