"""Pod port-forward over a WebSocket, framed as the kubelet frames it for the kubernetes client.

The "channel" subprotocol: every binary message starts with one byte naming its channel; for the i-th requested
port, channel 2i carries data and 2i+1 errors; the first message on each of the two is the port number (2 bytes,
little-endian), which the client checks before anything else. The stand-in bridges the data channel to a loopback
TCP port the test registered instead of the pod's port.

No exec: it runs through the real API server and the kubelet's own streaming code on the control plane
(tests/controlplane/modules/kubelet-streams), which every exec test uses.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading

from tests.standins.kubeapi.websocket import WebSocket

CHUNK = 32 * 1024  # output goes out in frames of at most this size, as the kubelet copies it: the client must join them
PORTFORWARD_PROTOCOLS = ("v4.channel.k8s.io",)


def serve_portforward(ws: WebSocket, pod: str, uid: str, ports: list[int], targets: dict[int, tuple[str, int]]) -> None:
    """Bridge each requested pod port to its registered address (`targets`: pod port -> (host, port))."""
    for i, port in enumerate(ports):  # first: the port number on both channels of each port
        prefix = struct.pack("<H", port)
        ws.send(bytes([2 * i]) + prefix)
        ws.send(bytes([2 * i + 1]) + prefix)
    conns: dict[int, socket.socket] = {}
    for i, port in enumerate(ports):
        try:
            if port not in targets:  # nothing listens on that port in the "pod"
                raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
            conns[i] = socket.create_connection(targets[port], timeout=5)
            conns[i].settimeout(None)
        except OSError as exc:  # the kubelet's message, on the port's error channel; the client closes that port
            reason = exc.strerror or str(exc)
            message = (
                f"error forwarding port {port} to pod {pod}, uid {uid}: failed to connect to localhost:{port} "
                f"inside the pod: dial tcp4 127.0.0.1:{port}: connect: {reason.lower()}"
            )
            ws.send(bytes([2 * i + 1]) + message.encode())
    remaining = [len(conns)]
    lock = threading.Lock()

    def pump(i: int, conn: socket.socket) -> None:
        """Pod port -> client, one frame per read. When every port's connection has ended, end the stream
        (the kubelet closes the WebSocket once all its ports are done)."""
        try:
            while data := conn.recv(CHUNK):
                ws.send(bytes([2 * i]) + data)
        except OSError:
            pass
        finally:
            with lock:
                remaining[0] -= 1
                if remaining[0] == 0:
                    ws.close_soon()

    threads = [
        threading.Thread(target=pump, args=item, daemon=True, name=f"standin-forward-{pod}") for item in conns.items()
    ]
    for thread in threads:
        thread.start()
    if not conns:
        ws.close_soon()
    try:
        while (message := ws.recv()) is not None:  # client -> pod: data channels only (no prefix this way)
            channel, data = (message[0], message[1:]) if message else (None, b"")
            conn = conns.get(channel // 2) if channel is not None and channel % 2 == 0 else None
            if conn is not None and data:
                try:
                    conn.sendall(data)
                except OSError:
                    _shut(conn)  # its pump ends, and ends the stream if it was the last
    finally:
        for conn in conns.values():
            _shut(conn)
        for thread in threads:
            thread.join(timeout=5)
        for conn in conns.values():
            conn.close()
        ws.close()


def _shut(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)  # also wakes a thread blocked in recv on it
    except OSError:
        pass
