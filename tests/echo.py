"""A loopback TCP echo server: what stands behind a pod's port in the port-forward tests (tests/platform through the
real API server, tests/standins/kubeapi through the API stand-in)."""

from __future__ import annotations

import socket
import threading

TIMEOUT = 20  # seconds a connection may sit idle


class EchoServer:
    """A loopback TCP server that sends back what it gets; counts connections (open now, most at once, ended)."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = self.most = self.ended = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn):
        with self._lock:
            self.open += 1
            self.most = max(self.most, self.open)
        conn.settimeout(TIMEOUT)
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self.open -= 1
                self.ended += 1

    def close(self):
        self.listener.close()
