"""Reach the cluster's broker from the user's machine through the Kubernetes API: nothing extra is exposed.

The broker's pod is found by its label, its password read from its Secret, and a local loopback port is
bridged to the pod's port by the kubernetes client's port-forward (one port-forward stream per connection).
"""

from __future__ import annotations

import base64
import select
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from piml.errors import InputError, PimlError, Problem

PORTS = {"redis": 6379, "rabbitmq": 5672}
RABBITMQ_USER = "piml"
# The kubernetes client opens a port-forward or exec stream by swapping its ApiClient's call_api for the
# duration of the call: two threads doing it at once on one client leave it swapped for good. One at a time.
_STREAM_OPENING = threading.Lock()


def open_stream(opener: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """kubernetes.stream.stream / portforward(*args, **kwargs), never two at once in this process, and bounded.

    The client opens its WebSocket with no timeout at all (its `_request_timeout` is not passed on to the
    socket), so an API server that accepts and never answers would hang us: the opening runs in a thread
    that is given up on after REQUEST_TIMEOUT."""
    from piml.kube.client import REQUEST_TIMEOUT

    outcome: dict[str, Any] = {}

    def opening() -> None:
        if not _STREAM_OPENING.acquire(timeout=REQUEST_TIMEOUT):
            return
        try:
            outcome["stream"] = opener(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread as it is
            outcome["error"] = exc
        finally:
            _STREAM_OPENING.release()

    thread = threading.Thread(target=opening, name="piml-open-stream", daemon=True)
    thread.start()
    thread.join(REQUEST_TIMEOUT)
    if "error" in outcome:
        raise outcome["error"]
    if "stream" not in outcome:
        raise PimlError(
            Problem(
                "the Kubernetes API",
                f"opened no exec / port-forward stream within {REQUEST_TIMEOUT:.0f} s",
                "check that k3s runs on the first server: `piml status`",
            ),
            1,
        )
    return outcome["stream"]


def urllib3_errors() -> type[Exception]:
    import urllib3

    return urllib3.exceptions.HTTPError


def unreachable(api: Any, exc: BaseException) -> PimlError:
    from piml.kube.client import REQUEST_TIMEOUT, why_unreachable

    host = api.api_client.configuration.host
    return PimlError(
        Problem(
            "the Kubernetes API",
            f"cannot reach {host} ({why_unreachable(exc, REQUEST_TIMEOUT)})",
            "check that k3s runs on the first server: `piml status`",
        ),
        1,
    )


def list_pods(api: Any, namespace: str, selector: str) -> list[dict[str, Any]]:
    """The pods matching the label `selector`, as the API's JSON (a CoreV1Api; bounded like every request)."""
    import json

    from piml.kube.client import REQUEST_TIMEOUT

    raw = api.list_namespaced_pod(
        namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT, _preload_content=False
    )
    try:
        return list(json.loads(raw.data).get("items") or [])
    except (ValueError, AttributeError):  # not a pod list: not an API server
        raise PimlError(
            Problem(f"cluster ({namespace})", "the Kubernetes API answered the pod list with no JSON"), 1
        ) from None


def pick_pod(api: Any, namespace: str, selector: str, what: str) -> str:
    """The name of a running, ready pod matching `selector`."""
    from piml.kube.podexec import first_ready

    return first_ready(list_pods(api, namespace, selector), what)


def secret_password(secret: Any, kind: str) -> str:
    data = (secret.data or {}) if secret is not None else {}
    if "password" not in data:
        raise PimlError(Problem(f"Secret {kind}", "has no password", "rerun `piml up` to recreate it"), 1)
    return base64.b64decode(data["password"]).decode()


class Forwarder:
    """A loopback listener; each connection to it is bridged to a new remote socket from `open_remote`."""

    def __init__(self, open_remote: Callable[[], socket.socket]):
        self.open_remote = open_remote
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self._closed = threading.Event()
        self._keep: list[Any] = []
        self.namespace = self.pod = ""  # where it leads, once forward() picked the pod
        threading.Thread(target=self._accept, daemon=True, name="piml-forward").start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                local, _ = self.listener.accept()
            except OSError:
                return
            try:
                remote = self.open_remote()
            except Exception:  # noqa: BLE001 - the client sees a closed connection and reports it
                local.close()
                continue
            threading.Thread(target=self._pump, args=(local, remote), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self._closed.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.5)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    peers[sock].sendall(data)
        except OSError:
            return
        finally:
            a.close()
            b.close()

    def close(self) -> None:
        self._closed.set()
        self.listener.close()


@dataclass
class Tunnel:
    url: str
    password: str
    forwarder: Forwarder

    def close(self) -> None:
        self.forwarder.close()

    def explain(self, exc: PimlError, kind: str) -> PimlError:
        """The broker's refusal to connect through the tunnel (which names the tunnel's loopback end), told about
        the pod behind it: the user never saw the loopback URL, but can look at the pod."""
        namespace, pod = self.forwarder.namespace, self.forwarder.pod
        where = f"{kind} pod {namespace}/{pod} (through a port-forward)"

        def fix(what: str) -> str:
            if "password" in what:  # the password came from the broker's Secret, not from the user
                return f"the broker does not take the password in its Secret {kind}: run `piml up` again"
            return f"see whether it runs: `piml status`, `kubectl -n {namespace} logs {pod}`"

        return PimlError([Problem(where, p.what, fix(p.what)) for p in exc.problems], exc.exit_code)


def open_tunnel(kubeconfig, namespace: str, kind: str) -> Tunnel:
    """A broker URL on 127.0.0.1 that reaches the cluster's broker, and the broker's password."""
    from pathlib import Path

    if not Path(kubeconfig).is_file():
        raise InputError(
            Problem(
                str(kubeconfig), "no kubeconfig", "run `piml up` first, or pass --queue-url redis://... / amqp://..."
            )
        )
    from kubernetes.client.rest import ApiException

    from piml.kube.client import REQUEST_TIMEOUT, core_api

    api = core_api(kubeconfig)
    try:
        password = secret_password(api.read_namespaced_secret(kind, namespace, _request_timeout=REQUEST_TIMEOUT), kind)
    except ApiException as exc:
        raise _refused(namespace, f"read the {kind} Secret", exc) from None
    except (OSError, urllib3_errors()) as exc:
        raise unreachable(api, exc) from None
    forwarder = forward(api, namespace, f"app.kubernetes.io/name={kind}", PORTS[kind], kind)
    url = (
        f"redis://127.0.0.1:{forwarder.port}/0"
        if kind == "redis"
        else f"amqp://{RABBITMQ_USER}@127.0.0.1:{forwarder.port}/"
    )
    return Tunnel(url, password, forwarder)


@contextmanager
def cluster_broker(cluster) -> Iterator[Any]:
    """The cluster's broker (queue.kind) through a port-forward, with the password from its Secret; closed after."""
    from piml.queue import connect

    kind = cluster.config.queue.kind
    tunnel = open_tunnel(cluster.paths.kubeconfig, cluster.config.namespace, kind)
    try:
        try:
            broker = connect(tunnel.url, password=tunnel.password)
        except PimlError as exc:
            raise tunnel.explain(exc, kind) from None
        try:
            yield broker
        finally:
            broker.close()
    finally:
        tunnel.close()


def _refused(namespace: str, doing: str, exc: Any) -> PimlError:
    """The API server answered an error (an ApiException) to what the tunnel needed."""
    where = f"cluster ({namespace})"
    fix = "check the kubeconfig and that `piml up` finished"
    return PimlError(Problem(where, f"cannot {doing}: HTTP {exc.status} {exc.reason}", fix), 1)


def forward(api: Any, namespace: str, selector: str, port: int, what: str) -> Forwarder:
    """A loopback listener bridged to `port` of a ready pod matching the label `selector` (a CoreV1Api)."""
    from kubernetes.client.rest import ApiException
    from kubernetes.stream import portforward

    try:
        pod = pick_pod(api, namespace, selector, what)
    except ApiException as exc:
        raise _refused(namespace, f"list the {what} pods", exc) from None
    except (OSError, urllib3_errors()) as exc:
        raise unreachable(api, exc) from None

    def open_remote() -> socket.socket:
        stream = open_stream(portforward, api.connect_get_namespaced_pod_portforward, pod, namespace, ports=str(port))
        remote = stream.socket(port)
        forwarder._keep.append(stream)  # the stream lives as long as its socket
        return remote

    forwarder = Forwarder(open_remote)
    forwarder.namespace, forwarder.pod = namespace, pod
    return forwarder
