"""STAND-IN of the kubelet's HTTPS API, the part the API server proxies `kubectl logs` to.

One server per stand-in node, on the node's InternalIP (127.0.0.10x) and a free port that the node posts as its
`daemonEndpoints.kubeletEndpoint.Port`, as a kubelet does. As k3s sets it up: the serving certificate is signed
by the server CA (the API server checks it: `--kubelet-certificate-authority`), and a client must present a
certificate of the client CA (the API server's `system:kube-apiserver`). Unlike a kubelet, it does not ask the
API server whether that client may (no SubjectAccessReview); anyone else is refused.

GET /containerLogs/<namespace>/<pod>/<container> (`tailLines`, `previous`): the lines are what nodes.py
recorded when it played the pod (faults.py). /portForward/<namespace>/<pod>[/<uid>] and
/exec/<namespace>/<pod>/<container> (SPDY or WebSocket upgrades, as the API server sends them): passed through,
bytes as they come, to the kubelet's own streaming code (modules/kubelet-streams, which connects a pod's port to
the process DIR/forwards.json names, and runs an exec'd command locally with the env DIR/execs.json gives the
pod). No attach, stats or metrics.
"""

from __future__ import annotations

import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

CLIENT_CN = "system:kube-apiserver"
STREAMS = ("/portForward/", "/exec/")  # what kubelet-streams serves


class Logs:
    """(namespace, pod, container) -> {"current": [...], "previous": [...] or None}; shared with the node."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_container: dict[tuple[str, str, str], dict] = {}

    def record(self, namespace: str, pod: str, container: str, current: list[str], previous: list[str] | None):
        with self.lock:
            self.by_container[(namespace, pod, container)] = {"current": current, "previous": previous}

    def forget_pod(self, namespace: str, pod: str) -> None:
        with self.lock:
            for key in [k for k in self.by_container if k[:2] == (namespace, pod)]:
                del self.by_container[key]

    def get(self, key):
        with self.lock:
            return self.by_container.get(key)


def serve(ip: str, cert: str, key: str, client_ca: str, logs: Logs, streams: str) -> ThreadingHTTPServer:
    """Start the server on (ip, a free port) in a daemon thread; `.server_address[1]` is the port. `streams`:
    HOST:PORT of the kubelet-streams server that port-forwards go to."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet: nodes.py logs what matters
            pass

        def _answer(self, code: int, text: str) -> None:
            body = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _refused(self) -> bool:
            peer = self.connection.getpeercert() or {}
            names = [v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"]
            if names != [CLIENT_CN]:
                self._answer(403, f"Forbidden (user={names[0] if names else 'anonymous'})")
                return True
            return False

        def _pass_through(self) -> None:
            """The request as it came, then both directions byte for byte until either side closes (the upgraded
            SPDY or WebSocket connection the kubelet's streaming code speaks)."""
            host, _, port = streams.rpartition(":")
            try:
                upstream = socket.create_connection((host, int(port)), timeout=10)
            except OSError as exc:
                return self._answer(502, f"kubelet-streams at {streams}: {exc}")
            upstream.settimeout(None)
            head = self.requestline + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in self.headers.items()) + "\r\n"
            upstream.sendall(head.encode("latin-1"))
            self.close_connection = True

            def down() -> None:  # kubelet-streams -> API server
                try:
                    while chunk := upstream.recv(65536):
                        self.wfile.write(chunk)
                except OSError:
                    pass
                finally:
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

            back = threading.Thread(target=down, daemon=True)
            back.start()
            try:
                while chunk := self.rfile.read1(65536):  # read1: what the request's reader already buffered too
                    upstream.sendall(chunk)
            except OSError:
                pass
            finally:
                try:
                    upstream.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            back.join(timeout=5)
            upstream.close()

        def do_POST(self):  # noqa: N802 - SPDY port-forwards and execs are POSTs
            if self._refused():
                return
            if self.path.startswith(STREAMS):
                return self._pass_through()
            return self._answer(404, "404 page not found")

        def do_GET(self):  # noqa: N802 (http.server's name)
            if self._refused():
                return
            if self.path.startswith(STREAMS):  # WebSocket port-forwards and execs are GETs
                return self._pass_through()
            url = urlsplit(self.path)
            parts = [unquote(p) for p in url.path.split("/")[1:]]
            if len(parts) != 4 or parts[0] != "containerLogs":
                return self._answer(404, "404 page not found")
            _, namespace, pod, container = parts
            query = parse_qs(url.query)
            found = logs.get((namespace, pod, container))
            if found is None:
                return self._answer(404, f'container "{container}" in pod "{pod}" is not available')
            previous = query.get("previous", ["false"])[0] == "true"
            lines = found["previous"] if previous else found["current"]
            if lines is None:
                return self._answer(400, f'previous terminated container "{container}" in pod "{pod}" not found')
            tail = query.get("tailLines", [None])[0]
            if tail is not None and tail.isdigit():
                lines = lines[-int(tail) :] if int(tail) else []
            return self._answer(200, "".join(line + "\n" for line in lines))

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    server = ThreadingHTTPServer((ip, 0), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name=f"kubelet-api-{ip}", daemon=True).start()
    return server
