"""The stand-in's pods/portforward, through the real kubernetes client (and piml's tunnel).

Everything on loopback, every wait bounded: sockets have timeouts.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.stream import portforward

from tests.echo import EchoServer
from tests.ports import free_port
from tests.standins.kubeapi import websocket
from tests.standins.kubeapi.server import FakeKubeAPI

TIMEOUT = 20  # seconds, for any one socket operation or exec


# ---- fixtures and helpers --------------------------------------------------------------------------


@pytest.fixture
def make_api():
    """Start stand-ins with chosen settings; all are stopped at the end of the test."""
    started = []

    def _make(**kwargs) -> FakeKubeAPI:
        api = FakeKubeAPI(**kwargs).start()
        started.append(api)
        return api

    yield _make
    for api in started:
        api.stop()


@pytest.fixture
def kubeapi(make_api) -> FakeKubeAPI:
    return make_api()


@pytest.fixture
def kubeconfig(tmp_path, kubeapi):
    path = tmp_path / "kubeconfig"
    kubeapi.write_kubeconfig(path)
    return path


@pytest.fixture
def core(kubeconfig):
    api = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
    yield api
    api.api_client.close()


@pytest.fixture
def echo():
    server = EchoServer()
    yield server
    server.close()


def recv_exactly(sock, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), 1 << 20))
        if not chunk:
            break
        data += chunk
    return data


def wait_until(check, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.02)
    raise AssertionError(f"not true within {timeout} s: {check}")


def open_forward(core, pod: str, port: int, namespace: str = "default"):
    forward = portforward(core.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port))
    sock = forward.socket(port)
    sock.settimeout(TIMEOUT)
    return forward, sock


# ---- port-forward ----------------------------------------------------------------------------------


def test_portforward_round_trips_bytes_and_ends_the_pod_connection(kubeapi, core, echo):
    kubeapi.add_pod("default", "web")
    kubeapi.forward("default", "web", 8080, echo.port)
    forward, sock = open_forward(core, "web", 8080)
    payload = bytes(range(256)) * 4  # every byte value, including 0 and 0xff
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload
    assert forward.error(8080) is None
    sock.close()
    wait_until(lambda: echo.ended == 1)  # closing the client's socket closed the stand-in's connection to the "pod"
    assert ("GET", "/api/v1/namespaces/default/pods/web/portforward?ports=8080") in kubeapi.requests


def test_portforward_two_connections_at_once(kubeapi, core, echo):
    kubeapi.add_pod("default", "web")
    kubeapi.forward("default", "web", 8080, echo.port)
    (_stream_a, a), (_stream_b, b) = (
        open_forward(core, "web", 8080),
        open_forward(core, "web", 8080),
    )  # streams kept open
    for i in range(20):  # interleaved: each stream gets back only its own bytes
        a.sendall(b"a%03d" % i)
        b.sendall(b"b%03d" % i)
        assert recv_exactly(b, 4) == b"b%03d" % i
        assert recv_exactly(a, 4) == b"a%03d" % i
    assert echo.most == 2
    a.close()
    b.close()
    wait_until(lambda: echo.ended == 2)


def test_portforward_carries_a_megabyte_both_ways(kubeapi, core, echo):
    kubeapi.add_pod("default", "web")
    kubeapi.forward("default", "web", 8080, echo.port)
    forward, sock = open_forward(core, "web", 8080)
    payload = os.urandom(1 << 20)
    sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)  # read while writing: no deadlock
    sender.start()
    assert recv_exactly(sock, len(payload)) == payload
    sender.join(TIMEOUT)
    sock.close()


def test_portforward_several_ports_in_one_stream(kubeapi, core, echo):
    other = EchoServer()
    try:
        kubeapi.add_pod("default", "web")
        kubeapi.forward("default", "web", 8080, echo.port)
        kubeapi.forward("default", "web", 9090, other.port)
        forward = portforward(core.connect_get_namespaced_pod_portforward, "web", "default", ports="8080,9090")
        first, second = forward.socket(8080), forward.socket(9090)
        for sock, data in ((first, b"to 8080"), (second, b"to 9090")):
            sock.settimeout(TIMEOUT)
            sock.sendall(data)
            assert recv_exactly(sock, len(data)) == data
        assert (echo.most, other.most) == (1, 1)
        first.close()
        second.close()
    finally:
        other.close()


def test_portforward_ends_when_the_pod_closes_its_end(kubeapi, core):
    with socket.create_server(("127.0.0.1", 0)) as listener:  # a "pod" that hangs up on every connection
        threading.Thread(target=lambda: listener.accept()[0].close(), daemon=True).start()
        kubeapi.add_pod("default", "web")
        kubeapi.forward("default", "web", 8080, listener.getsockname()[1])
        forward, sock = open_forward(core, "web", 8080)
        assert sock.recv(10) == b""  # the stand-in closed the WebSocket; the client closed the port's socket
        assert forward.error(8080) is None
        wait_until(lambda: not forward.connected)
        sock.close()


def test_portforward_to_an_unknown_pod_is_a_404_before_the_upgrade(kubeapi, core):
    with pytest.raises(ApiException) as raised:
        portforward(core.connect_get_namespaced_pod_portforward, "nope", "default", ports="8080")
    assert "404" in raised.value.reason and 'pods \\"nope\\" not found' in raised.value.reason


def test_portforward_to_a_port_nothing_listens_on_is_refused_on_the_error_channel(kubeapi, core):
    kubeapi.add_pod("default", "web")
    dead = free_port()  # a registered local port nobody listens on: the same as no registration
    kubeapi.forward("default", "web", 8081, dead)
    for port in (8080, 8081):
        forward, sock = open_forward(core, "web", port)
        assert sock.recv(10) == b""  # the client closes the port's socket when the error arrives
        error = forward.error(port)
        assert error.startswith(f"error forwarding port {port} to pod web, uid ") and error.endswith(
            "connection refused"
        )
        sock.close()


def test_streams_need_a_running_pod(make_api, tmp_path, echo):
    """Pods made by a Deployment: a port-forward is refused while Pending, served once Running."""
    api = make_api(ready_delay=0.5)
    path = tmp_path / "kubeconfig"
    api.write_kubeconfig(path)
    api_client = config.new_client_from_config(str(path))
    core = client.CoreV1Api(api_client)
    labels = {"app": "box"}
    client.AppsV1Api(api_client).create_namespaced_deployment(
        "default",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "box"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "main", "image": "box"}]},
                },
            },
        },
    )
    pod = core.list_namespaced_pod("default", label_selector="app=box").items[0]
    assert pod.status.phase == "Pending"
    api.forward("default", pod.metadata.name, 8080, echo.port)
    with pytest.raises(ApiException) as raised:
        portforward(core.connect_get_namespaced_pod_portforward, pod.metadata.name, "default", ports="8080")
    assert "400" in raised.value.reason and "is not running (phase Pending)" in raised.value.reason
    wait_until(lambda: core.read_namespaced_pod(pod.metadata.name, "default").status.phase == "Running", 5)
    forward, sock = open_forward(core, pod.metadata.name, 8080)
    sock.sendall(b"up")
    assert recv_exactly(sock, 2) == b"up"
    sock.close()
    forward.close()
    api_client.close()


def test_stop_ends_open_streams(make_api, tmp_path, echo):
    api = make_api()
    path = tmp_path / "kubeconfig"
    api.write_kubeconfig(path)
    core = client.CoreV1Api(config.new_client_from_config(str(path)))
    api.add_pod("default", "web")
    api.forward("default", "web", 8080, echo.port)
    forward, sock = open_forward(core, "web", 8080)
    sock.sendall(b"x")
    assert sock.recv(1) == b"x"
    api.stop()
    assert sock.recv(1) == b""  # not left hanging until the socket timeout
    wait_until(lambda: echo.ended == 1)
    core.api_client.close()


# ---- port-forward through piml's tunnel, to a real redis-server -------------------------------------


@pytest.fixture
def redis_server(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed (tests/queue/install-deps.sh)")
    import redis

    from tests.queue.helpers import stop

    port, password = free_port(), secrets.token_urlsafe(18)
    proc = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(tmp_path),
            "--save",
            "",
            "--appendonly",
            "no",
            "--requirepass",
            password,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        check = redis.Redis(port=port, password=password, socket_connect_timeout=1, socket_timeout=2)
        wait_until(lambda: proc.poll() is None and _ping(check), 20)
        check.close()
        yield port, password
    finally:
        stop(proc)


def _ping(r) -> bool:
    try:
        return r.ping()
    except Exception:  # noqa: BLE001 - not up yet
        return False


def test_open_tunnel_reaches_redis_with_the_password_from_the_secret(kubeapi, core, kubeconfig, redis_server):
    import redis

    from piml.queue.tunnel import open_tunnel

    port, password = redis_server
    core.create_namespace({"metadata": {"name": "piml"}})
    core.create_namespaced_secret("piml", {"metadata": {"name": "redis"}, "stringData": {"password": password}})
    kubeapi.add_pod("piml", "redis-7d9f-0", labels={"app.kubernetes.io/name": "redis"})
    kubeapi.forward("piml", "redis-7d9f-0", 6379, port)
    tunnel = open_tunnel(kubeconfig, "piml", "redis")
    try:
        assert tunnel.password == password
        assert tunnel.url.startswith("redis://127.0.0.1:") and str(port) not in tunnel.url
        first = redis.Redis.from_url(tunnel.url, password=tunnel.password, socket_timeout=TIMEOUT)
        second = redis.Redis.from_url(tunnel.url, password=tunnel.password, socket_timeout=TIMEOUT)
        assert first.ping() and second.ping()  # one port-forward stream per connection, two at once
        first.set("through", b"\x00tunnel\xff")
        assert second.get("through") == b"\x00tunnel\xff"
        wrong = redis.Redis.from_url(tunnel.url, password="wrong", socket_timeout=TIMEOUT)
        with pytest.raises(redis.AuthenticationError):
            wrong.ping()
        wrong.close()
        first.close()
        second.close()
    finally:
        tunnel.close()
    forwards = [p for m, p in kubeapi.requests if p.startswith("/api/v1/namespaces/piml/pods/redis-7d9f-0/portforward")]
    assert len(forwards) == 3


# ---- the WebSocket layer itself ----------------------------------------------------------------------


def test_accept_key_is_rfc_6455s():
    assert websocket.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 section 1.3


def _raw_upgrade(kubeapi, path: str, protocol: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", int(kubeapi.url.rsplit(":", 1)[1])), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: standin\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert f"Sec-WebSocket-Accept: {websocket.accept_key(key)}".encode() in head
    return sock, head


def _read_frame(sock) -> tuple[int, bytes]:
    b0, b1 = recv_exactly(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", recv_exactly(sock, 2))[0]
    assert not b1 & 0x80, "servers do not mask"
    return b0 & 0x0F, recv_exactly(sock, n)


def _masked(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_websocket_ping_data_close_and_an_unmasked_frame(kubeapi, echo):
    kubeapi.add_pod("default", "web")
    kubeapi.forward("default", "web", 8080, echo.port)
    path = "/api/v1/namespaces/default/pods/web/portforward?ports=8080"
    sock, head = _raw_upgrade(kubeapi, path, "v4.channel.k8s.io")
    assert head.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Protocol: v4.channel.k8s.io" in head
    assert [_read_frame(sock), _read_frame(sock)] == [
        (websocket.BINARY, b"\x00\x90\x1f"),
        (websocket.BINARY, b"\x01\x90\x1f"),
    ]
    sock.sendall(_masked(websocket.PING, b"are you there"))
    assert _read_frame(sock) == (websocket.PONG, b"are you there")
    sock.sendall(_masked(websocket.BINARY, b"\x00hi"))
    assert _read_frame(sock) == (websocket.BINARY, b"\x00hi")
    sock.sendall(_masked(websocket.CLOSE, struct.pack("!H", 1000)))
    assert _read_frame(sock) == (websocket.CLOSE, struct.pack("!H", 1000))
    assert sock.recv(1) == b""
    sock.close()

    sock, _ = _raw_upgrade(kubeapi, path, "v4.channel.k8s.io")
    _read_frame(sock), _read_frame(sock)
    sock.sendall(bytes([0x82, 3]) + b"\x00hi")  # unmasked: a protocol error (RFC 6455 5.1)
    opcode, payload = _read_frame(sock)
    assert opcode == websocket.CLOSE and payload[:2] == struct.pack("!H", 1002)
    sock.close()
    wait_until(lambda: echo.ended == 2)


def test_an_unknown_subprotocol_is_a_400_before_the_upgrade(kubeapi):
    kubeapi.add_pod("default", "box")
    path = "/api/v1/namespaces/default/pods/box/portforward?ports=8080"
    sock = socket.create_connection(("127.0.0.1", int(kubeapi.url.rsplit(":", 1)[1])), timeout=TIMEOUT)
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: standin\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Protocol: v3.channel.k8s.io\r\n\r\n"
        ).encode()
    )
    assert sock.recv(200).startswith(b"HTTP/1.1 400 ")
    sock.close()
