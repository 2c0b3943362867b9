"""The real control plane (kube-apiserver, kube-controller-manager, kube-scheduler v1.36.3 over kine/SQLite) with
two stand-in nodes, started and stopped by scripts/control-plane as a user would. Skipped only without Go."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.controlplane.objects import deployment

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "control-plane"
GO = shutil.which("go") or ("/usr/local/go/bin/go" if os.access("/usr/local/go/bin/go", os.X_OK) else None)

pytestmark = pytest.mark.skipif(GO is None, reason="Go is not installed (needed to build the control plane)")


def cp(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def until(what: str, check, timeout: float = 60, every: float = 0.25):
    """`check()`'s first truthy answer, polled; an AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    build = cp("build", timeout=3 * 3600)  # cold: tens of minutes once; then reused from the cache
    assert build.returncode == 0, build.stderr
    d = tmp_path_factory.mktemp("cp") / "plane"
    r = cp("up", str(d), "--nodes", "2", "--node-memory", "8Gi", "--arch", "arm64", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    state = json.loads(r.stdout)
    yield d, state
    cp("down", str(d), timeout=60)


@pytest.fixture(scope="module")
def api(plane):
    from kubernetes import client, config

    d, _ = plane
    c = config.new_client_from_config(config_file=str(d / "kubeconfig"))
    yield client.CoreV1Api(c), client.AppsV1Api(c), c
    c.close()


def test_kubeconfig_is_shaped_as_k3s_yaml(plane):
    import yaml

    d, state = plane
    kc = yaml.safe_load((d / "kubeconfig").read_text())
    assert [c["name"] for c in kc["clusters"]] == ["default"] and kc["current-context"] == "default"
    assert kc["users"][0]["name"] == "default"
    assert kc["clusters"][0]["cluster"]["server"].startswith("https://127.0.0.1:")
    assert (os.stat(d / "kubeconfig").st_mode & 0o777) == 0o600


def test_version_is_the_k3s_kubernetes(api):
    from kubernetes import client

    _, _, c = api
    v = client.VersionApi(c).get_code(_request_timeout=10)
    assert v.git_version == "v1.36.3" and (v.major, v.minor) == ("1", "36")


def test_two_ready_nodes_as_k3s_labels_them(api):
    core, _, _ = api
    nodes = {n.metadata.name: n for n in core.list_node(_request_timeout=10).items}
    assert sorted(nodes) == ["node-1", "node-2"]
    for n in nodes.values():
        ready = {c.type: c.status for c in n.status.conditions}
        assert ready["Ready"] == "True" and ready["MemoryPressure"] == "False"
        assert n.metadata.labels["kubernetes.io/arch"] == "arm64"
        assert n.status.allocatable["pods"] == "110" and n.status.capacity["cpu"] == "4"
    assert nodes["node-1"].metadata.labels.get("node-role.kubernetes.io/control-plane") == "true"
    assert "node-role.kubernetes.io/control-plane" not in nodes["node-2"].metadata.labels
    # The real controller-manager gave each node a pod CIDR out of k3s's cluster CIDR.
    until("pod CIDRs", lambda: all(n.spec.pod_cidr for n in core.list_node(_request_timeout=10).items), 30)


def _deployment(name: str, extra_container_field: dict | None = None) -> dict:
    container = {
        "name": "web",
        "image": "nginx:1.27",
        "ports": [{"containerPort": 80}],
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
    }
    container.update(extra_container_field or {})
    return deployment(name, {"containers": [container]})


def raw(
    c, method: str, path: str, query: dict | None = None, body=None, content_type: str = "application/json"
) -> tuple[int, dict]:
    """A plain JSON request over the client, as piml.kube.client sends them (no client-side model checks)."""
    from urllib.parse import urlencode

    full = path + ("?" + urlencode(query) if query else "")
    req = c.param_serialize(
        method,
        full,
        header_params={"Accept": "application/json", "Content-Type": content_type},
        body=body,
        auth_settings=["BearerToken"],
    )
    r = c.call_api(*req, _request_timeout=10)
    data = r.read()
    return r.status, (json.loads(data) if data else {})


def _apply(c, ns: str, body: dict) -> tuple[int, dict]:
    return raw(
        c,
        "PATCH",
        f"/apis/apps/v1/namespaces/{ns}/deployments/{body['metadata']['name']}",
        {"fieldManager": "piml-test", "force": "true", "fieldValidation": "Strict"},
        body,
        "application/apply-patch+yaml",
    )


def test_a_misspelled_field_is_refused(api):
    _, _, c = api
    typo = _deployment("typo", {"imagePullPolicyy": "Always"})
    # Server-side apply refuses it, but Kubernetes v1.36.3 answers 500, not 400: the apply patch fails its typed
    # conversion before strict validation runs (kubernetes/kubernetes#122480, #139253; fix proposed in #139255).
    status, body = _apply(c, "default", typo)
    assert status in (400, 500), (status, body)
    assert "imagePullPolicyy: field not declared in schema" in body["message"]
    # A create with fieldValidation=Strict is refused as a bad request.
    status, body = raw(c, "POST", "/apis/apps/v1/namespaces/default/deployments", {"fieldValidation": "Strict"}, typo)
    assert status == 400 and 'unknown field "spec.template.spec.containers[0].imagePullPolicyy"' in body["message"], (
        body
    )
    assert raw(c, "GET", "/apis/apps/v1/namespaces/default/deployments/typo")[0] == 404


def test_deployment_pod_is_scheduled_and_run(api):
    core, apps, c = api
    assert _apply(c, "default", _deployment("web"))[0] in (200, 201)

    def running():
        pods = core.list_namespaced_pod("default", label_selector="app=web", _request_timeout=10).items
        return [
            p
            for p in pods
            if p.status.phase == "Running"
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]

    pod = until("the Deployment's pod Running and Ready", running, 60)[0]
    assert pod.spec.node_name in ("node-1", "node-2")
    assert pod.status.pod_ip and pod.status.container_statuses[0].ready
    # Bound by the real scheduler, which says so in an event.
    events = core.list_namespaced_event(
        "default", field_selector=f"involvedObject.name={pod.metadata.name}", _request_timeout=10
    ).items
    assert any(
        e.reason == "Scheduled" and (e.reporting_component or e.source.component) == "default-scheduler" for e in events
    ), [(e.reason, e.source.component, e.reporting_component) for e in events]
    until(
        "the Deployment available",
        lambda: (
            (apps.read_namespaced_deployment("web", "default", _request_timeout=10).status.available_replicas or 0) == 1
        ),
        60,
    )


def test_namespace_deletion_goes_terminating_then_gone(api):
    from kubernetes.client.rest import ApiException

    core, apps, c = api
    core.create_namespace({"metadata": {"name": "doomed"}}, _request_timeout=10)
    until(
        "default ServiceAccount in the new namespace",
        lambda: any(
            s.metadata.name == "default"
            for s in core.list_namespaced_service_account("doomed", _request_timeout=10).items
        ),
        30,
    )
    assert _apply(c, "doomed", _deployment("web"))[0] in (200, 201)
    until(
        "a pod Running in doomed",
        lambda: [
            p for p in core.list_namespaced_pod("doomed", _request_timeout=10).items if p.status.phase == "Running"
        ],
        60,
    )
    core.delete_namespace("doomed", _request_timeout=10)
    assert core.read_namespace("doomed", _request_timeout=10).status.phase == "Terminating"

    def gone():
        try:
            core.read_namespace("doomed", _request_timeout=10)
            return False
        except ApiException as e:
            return e.status == 404

    until("namespace doomed gone", gone, 90)


def test_down_leaves_nothing_running(plane):
    d, state = plane
    pids = [p["pid"] for p in state["procs"].values()]
    assert sorted(state["procs"]) == [
        "helm-controller",
        "kine",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet-streams",
        "kuberay-operator",
        "local-path-provisioner",
        "nodes",
    ]  # the add-ons are on by default
    assert all(alive(p) for p in pids)
    r = cp("down", str(d), timeout=60)
    assert r.returncode == 0, r.stderr
    assert not [p for p in pids if alive(p)]
    assert not d.exists()


@pytest.mark.parametrize(
    "args, says",
    [
        (["--node", "Pi1"], "must be a DNS-1123 label"),
        (["--node", "pi1", "--node", "pi2", "--node", "pi1"], "node pi1 is given twice"),
        (["--node", "pi1:8G"], "write a memory quantity such as 8Gi"),
        (["--node", "pi1:8Gi:arm"], "architecture 'arm' is unknown: use arm64 or amd64"),
        (["--node", "pi1:8Gi:arm64:x"], "write NAME[:MEMORY[:ARCH]]"),
        (["--nodes", "2", "--node", "pi1"], "--nodes and --node exclude each other"),
        (["--nodes", "0"], "--nodes 0: give 1 to"),
        (["--node-memory", "lots"], "--node-memory 'lots'"),
    ],
)
def test_up_refuses_bad_nodes_in_one_line(tmp_path, args, says):
    """--node NAME[:MEMORY[:ARCH]] (and --nodes, --node-memory) checked before anything is built or started."""
    r = cp("up", str(tmp_path / "plane"), *args, timeout=30)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("control-plane up: ") and says in r.stderr, r.stderr
    assert not (tmp_path / "plane").exists()
