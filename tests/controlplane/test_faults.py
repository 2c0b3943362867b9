"""The faults a test injects into the kubelet stand-in (faults.py), and the logs it serves through the REAL API
server's proxy to the kubelet (kubelet_api.py): what `kubectl logs` and piml's diagnosis read."""

from __future__ import annotations

import pytest

from tests.controlplane import faults
from tests.controlplane.objects import deployment
from tests.controlplane.test_control_plane import GO, until

pytestmark = pytest.mark.skipif(GO is None, reason="Go is not installed (needed to build the control plane)")


def crashing(name: str, image: str = "busybox:1.36") -> dict:
    return deployment(name, {"containers": [{"name": "main", "image": image, "command": ["/bin/app"]}]}, "default")


@pytest.fixture(scope="module")
def plane(bare_plane):
    return bare_plane


def pod_of(k, name: str) -> dict:
    def found():
        pods = k.request("GET", "/api/v1/namespaces/default/pods", {"labelSelector": f"app={name}"})["items"]
        return [p for p in pods if (p.get("status") or {}).get("containerStatuses")]

    return until(f"a pod of {name} with container statuses", found, 60)[0]


def test_crash_logs_come_through_the_api_servers_proxy(plane):
    d, k = plane
    faults.inject(d, "crasher", "crash", logs=[f"line {i}" for i in range(1, 13)] + ["Error: boom"])
    k.request("POST", "/apis/apps/v1/namespaces/default/deployments", body=crashing("crasher"))
    pod = pod_of(k, "crasher")
    (cs,) = pod["status"]["containerStatuses"]
    assert cs["state"]["waiting"]["reason"] == "CrashLoopBackOff" and cs["lastState"]["terminated"]["exitCode"] == 1
    assert pod["status"]["phase"] == "Running" and not cs["ready"]
    path = f"/api/v1/namespaces/default/pods/{pod['metadata']['name']}/log"
    text = k.request("GET", path, {"container": "main", "previous": "true", "tailLines": 3}, text=True)
    assert text.splitlines() == ["line 11", "line 12", "Error: boom"]
    # The restarted container has not logged yet.
    assert k.request("GET", path, {"container": "main"}, text=True) == ""


def test_exec_format_and_image_pull_as_a_kubelet_reports_them(plane):
    from piml.kube.diagnose import pod_problems

    d, k = plane
    faults.inject(d, "wrongarch", "exec-format")
    faults.inject(d, "nosuchimage", "image-pull")
    k.request("POST", "/apis/apps/v1/namespaces/default/deployments", body=crashing("wrongarch"))
    k.request("POST", "/apis/apps/v1/namespaces/default/deployments", body=crashing("nosuchimage", "nope:0"))
    wrong = pod_of(k, "wrongarch")
    assert wrong["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 255
    pulled = pod_of(k, "nosuchimage")
    assert pulled["status"]["phase"] == "Pending"
    assert pulled["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"
    (arch,) = until("the diagnosis", lambda: pod_problems(k, "default", "app=wrongarch", "Deployment x"))
    assert "image busybox:1.36 is built for another architecture than node node-1 (arm64)" in str(arch)
    (pull,) = until("the diagnosis", lambda: pod_problems(k, "default", "app=nosuchimage", "Deployment x"))
    assert str(pull).startswith("Deployment x: image nope:0 cannot be pulled (ImagePullBackOff: not found)")


def test_the_kubelet_api_refuses_a_client_that_is_not_the_api_server(plane):
    import json
    import ssl
    import urllib.error
    import urllib.request

    d, k = plane
    state = json.loads((d / "controlplane.json").read_text())
    node = k.request("GET", "/api/v1/nodes/node-1")
    port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
    assert port != 10250  # a free port: several control planes may run at once
    tls = state["tls"]
    context = ssl.create_default_context(cafile=tls["server-ca"])  # the serving cert is the server CA's
    context.load_cert_chain(tls["client-admin"], tls["client-admin-key"])
    url = f"https://127.0.0.101:{port}/containerLogs/default/x/main"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, context=context, timeout=5)
    assert refused.value.code == 403
