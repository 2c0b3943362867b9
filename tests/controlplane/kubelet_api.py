"""STAND-IN of the kubelet's HTTPS API, the part the API server proxies `kubectl logs` to.

One server per stand-in node, on the node's InternalIP (127.0.0.10x) and a free port that the node posts as its
`daemonEndpoints.kubeletEndpoint.Port`, as a kubelet does. As k3s sets it up: the serving certificate is signed
by the server CA (the API server checks it: `--kubelet-certificate-authority`), and a client must present a
certificate of the client CA (the API server's `system:kube-apiserver`). Unlike a kubelet, it does not ask the
API server whether that client may (no SubjectAccessReview); anyone else is refused.

Only GET /containerLogs/<namespace>/<pod>/<container> (`tailLines`, `previous`); the lines are what nodes.py
recorded when it played the pod (faults.py). No exec, attach, port-forward, stats or metrics.
"""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

CLIENT_CN = "system:kube-apiserver"


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


def serve(ip: str, cert: str, key: str, client_ca: str, logs: Logs) -> ThreadingHTTPServer:
    """Start the server on (ip, a free port) in a daemon thread; `.server_address[1]` is the port."""

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

        def do_GET(self):  # noqa: N802 (http.server's name)
            peer = self.connection.getpeercert() or {}
            names = [v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"]
            if names != [CLIENT_CN]:
                return self._answer(403, f"Forbidden (user={names[0] if names else 'anonymous'})")
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
