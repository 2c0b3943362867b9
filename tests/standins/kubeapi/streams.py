"""Pod exec and pod port-forward over a WebSocket, framed as the kubelet frames them for the kubernetes client.

Both use the "channel" subprotocol: every binary message starts with one byte naming its channel.
- exec: 1 stdout, 2 stderr, 3 error (a v1 Status JSON that carries the exit code), then the server closes.
- port-forward: for the i-th requested port, channel 2i carries data and 2i+1 errors; the first message on
  each of the two is the port number (2 bytes, little-endian), which the client checks before anything else.
The stand-in runs the test's exec handler instead of a container process, and bridges the data channel to
a loopback TCP port the test registered instead of the pod's port.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Callable

from tests.standins.kubeapi.websocket import WebSocket

STDOUT, STDERR, ERROR = 1, 2, 3
CHUNK = 32 * 1024  # output goes out in frames of at most this size, as the kubelet copies it: the client must join them
# Client order wins (the API server's wsstream picks the first offered protocol it speaks). The kubernetes client
# offers v5 then v4; a current API server speaks v5 for exec (v5 only adds the client's stdin-close signal, which
# needs stdin, which the stand-in does not take) and only v4 for port-forward.
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
PORTFORWARD_PROTOCOLS = ("v4.channel.k8s.io",)

ExecHandler = Callable[[list[str]], tuple[int, bytes, bytes]]


def exec_status(argv: list[str], code: int) -> dict:
    """The Status the kubelet writes on the error channel when the command ended (remotecommand v4)."""
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command [{' '.join(argv)}], exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def serve_exec(ws: WebSocket, argv: list[str], handler: ExecHandler, stdout: bool, stderr: bool) -> None:
    try:
        code, out, err = handler(list(argv))
        status = exec_status(argv, int(code))
    except Exception as exc:  # noqa: BLE001 - a broken handler is a test bug: say so the way the API says its own errors
        out, err = b"", b""
        status = {
            "metadata": {},
            "status": "Failure",
            "reason": "InternalError",
            "code": 500,
            "message": f"stand-in exec handler failed: {exc!r}",
        }
    try:
        for channel, data, wanted in ((STDOUT, out, stdout), (STDERR, err, stderr)):
            data = data.encode() if isinstance(data, str) else bytes(data)
            for start in range(0, len(data) if wanted else 0, CHUNK):
                ws.send(bytes([channel]) + data[start : start + CHUNK])
        ws.send(bytes([ERROR]) + json.dumps(status).encode())
    except OSError:
        pass  # the client went away (e.g. its own timeout): nothing to tell it any more
    ws.close()


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


def run_locally(env: dict[str, str] | None = None, timeout: float = 60.0, cwd=None) -> ExecHandler:
    """An exec handler that runs the command as a local process (the test's environment plus `env`).

    Like a container process: no stdin, and a process ended by signal N exits 128+N. A command that is not
    found exits 127; one that outlives `timeout` is killed with its process group (exit 137, a note on stderr).
    """

    def run(argv: list[str]) -> tuple[int, bytes, bytes]:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        except FileNotFoundError:
            return 127, b"", f'exec: "{argv[0]}": executable file not found in $PATH\n'.encode()
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=10)
            return 137, out, err + f"stand-in: killed after {timeout} s\n".encode()
        code = proc.returncode
        return (code if code >= 0 else 128 - code), out, err

    return run
