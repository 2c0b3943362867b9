"""Port-forwards through the real API server: `kubectl port-forward` (WebSocket tunnelling, the 1.36 default, and
SPDY) and piml's own (the kubernetes client's WebSocket, which `piml jobs` / `piml submit` / `piml check` use to
reach the queue, the Ray dashboard and the serving head). The API server finds the pod's node and proxies to that
node's kubelet, where the kubelet's own streaming code (tests/controlplane/modules/kubelet-streams, the one
stand-in) connects the pod's port to a real process on loopback (DIR/forwards.json)."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time

import pytest

from tests.controlplane.test_control_plane import until
from tests.echo import EchoServer

NAMESPACE = "forward-test"


def behind(plane, namespace: str, pod: str, port: int, target_port: int) -> None:
    """The process on 127.0.0.1:`target_port` is what `pod`'s `port` reaches (kubelet-streams reads it each time)."""
    path = plane.dir / "forwards.json"
    forwards = json.loads(path.read_text()) if path.exists() else {}
    forwards.setdefault(f"{namespace}/{pod}", {})[str(port)] = f"127.0.0.1:{target_port}"
    path.write_text(json.dumps(forwards))


def running_pod(kube, namespace: str, name: str, labels: dict) -> None:
    if kube.get(f"/api/v1/namespaces/{namespace}") is None:
        kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": namespace}})
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "redis:7.4.1"}], "terminationGracePeriodSeconds": 0},
    }
    kube.request("POST", f"/api/v1/namespaces/{namespace}/pods", body=pod)

    def ready():
        live = kube.get(f"/api/v1/namespaces/{namespace}/pods/{name}") or {}
        return any(c["type"] == "Ready" and c["status"] == "True" for c in live.get("status", {}).get("conditions", []))

    until(f"pod {namespace}/{name} Ready", ready, 60)


@pytest.fixture(scope="module")
def echo_pod(plane):
    kube = plane.kube()
    running_pod(kube, NAMESPACE, "echo", {"app": "echo"})
    server = EchoServer()
    behind(plane, NAMESPACE, "echo", 7000, server.port)
    yield "echo"
    server.close()
    kube.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}")
    kube.close()


def kubectl_forward(kubectl, plane, pod: str, port: int, home, websockets: str = "true"):
    """`kubectl port-forward pod/POD :PORT` running, and the local port it chose."""
    env = {"KUBECONFIG": str(plane.kubeconfig), "KUBECTL_PORT_FORWARD_WEBSOCKETS": websockets, "HOME": str(home)}
    proc = subprocess.Popen(  # HOME: kubectl keeps its cache in $HOME/.kube
        [str(kubectl), "port-forward", "-n", NAMESPACE, f"pod/{pod}", f":{port}", "--address", "127.0.0.1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = until("kubectl port-forward listening", proc.stdout.readline, 30)
    return proc, int(re.search(rf"127\.0\.0\.1:(\d+) -> {port}", line).group(1))


def round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        conn.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
    return got


@pytest.mark.parametrize("websockets", ["true", "false"], ids=["websocket-tunnel", "spdy"])
def test_kubectl_port_forward_reaches_the_process_behind_the_pod(plane, kubectl, echo_pod, websockets, tmp_path):
    proc, local = kubectl_forward(kubectl, plane, echo_pod, 7000, tmp_path, websockets)
    try:
        payload = bytes(range(256)) * 4096  # a megabyte, every byte value
        assert round_trip(local, payload) == payload
        assert round_trip(local, b"again") == b"again"  # a second connection on the same forward
    finally:
        proc.terminate()
        proc.wait(10)


def test_piml_port_forward_reaches_the_process_behind_the_pod(plane, echo_pod):
    from piml.kube.client import core_api
    from piml.queue.tunnel import forward

    forwarder = forward(core_api(plane.kubeconfig), NAMESPACE, "app=echo", 7000, "echo")
    try:
        payload = bytes(range(256)) * 1024
        assert round_trip(forwarder.port, payload) == payload
        first = socket.create_connection(("127.0.0.1", forwarder.port), timeout=20)
        second = socket.create_connection(("127.0.0.1", forwarder.port), timeout=20)
        first.sendall(b"one")
        second.sendall(b"two")
        assert (first.recv(3), second.recv(3)) == (b"one", b"two")  # a stream per connection, two at once
        first.close()
        second.close()
    finally:
        forwarder.close()


def test_piml_jobs_reaches_the_queue_through_the_api_server(piml, project, redis_server):
    """`piml jobs` as a user runs it (no --queue-url): the redis pod found by its label, the password read from
    its Secret, the port-forwarded through the API server to the process behind the pod (a real redis-server)."""
    from piml.queue import connect, make_request

    kube = project.plane.kube()
    namespace = project.cluster().config.namespace
    running_pod(kube, namespace, "redis-0", {"app.kubernetes.io/name": "redis"})
    secret = {"metadata": {"name": "redis", "namespace": namespace}, "stringData": {"password": redis_server.password}}
    kube.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body=secret)
    behind(project.plane, namespace, "redis-0", 6379, redis_server.port)
    broker = connect(redis_server.url)
    broker.r.flushdb()
    request = make_request("models:/iris/1", "/data/rows.csv")
    broker.submit(request)
    try:
        started = time.monotonic()
        out = piml("jobs", "--json", cwd=project.root)
        assert out.returncode == 0, out.stderr
        assert [j["id"] for j in json.loads(out.stdout)["jobs"]] == [request.id]
        assert time.monotonic() - started < 30
        assert redis_server.password not in out.stdout + out.stderr
        # A Secret the broker does not agree with: the pod named, and the way to set both again.
        kube.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/secrets/redis",
            body={"stringData": {"password": "not-the-password-0000"}},
            content_type="application/merge-patch+json",
        )
        out = piml("jobs", cwd=project.root)
        assert out.returncode == 1
        [line] = out.stderr.strip().splitlines()
        assert line == (
            f"error: redis pod {namespace}/redis-0 (through a port-forward): Redis refused the password; "
            "the broker does not take the password in its Secret redis: run `piml up` again"
        ), line
    finally:
        broker.r.flushdb()  # the session's Redis: no request of this test is left for the next one's runner
        broker.close()
        kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/redis-0")
        kube.request("DELETE", f"/api/v1/namespaces/{namespace}/secrets/redis")
        kube.close()


def test_a_port_nothing_listens_on_is_named_by_the_runtime_not_hung(plane, kubectl, echo_pod, tmp_path):
    """The runtime's refusal (nothing behind the pod's port) comes back on the port-forward's error stream:
    kubectl says it, and piml's forward ends the connection at once instead of hanging."""
    from piml.kube.client import core_api
    from piml.queue.tunnel import forward

    proc, local = kubectl_forward(kubectl, plane, echo_pod, 7001, tmp_path)
    try:
        assert round_trip(local, b"anyone?") == b""
    finally:
        proc.terminate()
        _, said = proc.communicate(timeout=10)
    assert "failed to connect to localhost:7001 inside namespace of pod forward-test/echo" in said, said

    forwarder = forward(core_api(plane.kubeconfig), NAMESPACE, "app=echo", 7001, "echo")
    try:
        started = time.monotonic()
        assert round_trip(forwarder.port, b"anyone?") == b""
        assert time.monotonic() - started < 15
    finally:
        forwarder.close()
    forwards = [
        r for r in plane.requests() if r.uri.startswith(f"/api/v1/namespaces/{NAMESPACE}/pods/echo/portforward")
    ]
    assert forwards, "no port-forward reached the API server"


def test_piml_jobs_names_the_pod_when_the_queue_does_not_answer_behind_it(piml, project):
    """The broker pod runs, but nothing answers on its port (Redis still starting, or crashed in the pod): one line
    naming the pod, not the port-forward's local end, at once."""
    kube = project.plane.kube()
    namespace = project.cluster().config.namespace
    running_pod(kube, namespace, "redis-1", {"app.kubernetes.io/name": "redis"})
    secret = {"metadata": {"name": "redis", "namespace": namespace}, "stringData": {"password": "unused-0000"}}
    kube.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body=secret)
    try:
        started = time.monotonic()
        out = piml("jobs", cwd=project.root)
        assert out.returncode == 1 and time.monotonic() - started < 30
        [line] = out.stderr.strip().splitlines()
        assert line.startswith(f"error: redis pod {namespace}/redis-1 (through a port-forward): cannot reach Redis"), (
            line
        )
        assert f"kubectl -n {namespace} logs redis-1" in line and "127.0.0.1" not in line, line
    finally:
        kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/redis-1")
        kube.request("DELETE", f"/api/v1/namespaces/{namespace}/secrets/redis")
        kube.close()
