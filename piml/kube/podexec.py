"""Run a command in a pod through the API server (what `kubectl exec -i` does), bytes in and out as files.

For data too big to hold in memory, and not text: a database dump out of a pod, or into one. The kubernetes
client's WebSocket speaks the v5 channel protocol with 1.30+ API servers; v5 is what lets us close the command's
stdin (a CLOSE frame), so a program reading its input to the end (psql) sees it end. An API server that does not
speak v5 is refused in one line rather than left waiting."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import IO, Any

from piml.errors import EXIT_FAILED, PimlError, Problem

CHUNK = 1 << 16
V5 = "v5.channel.k8s.io"


@dataclass(frozen=True)
class Finished:
    exit_code: int
    stderr: str  # its last lines, for saying why

    def last_line(self) -> str:
        return (self.stderr.strip().splitlines() or [f"exit {self.exit_code}"])[-1][:300]


def first_ready(pods: list[dict[str, Any]], what: str) -> str:
    """The name of the first pod (as the API's JSON) that runs, is Ready and is not being deleted; PimlError naming
    `what` when there is none."""
    for pod in pods:
        metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        if status.get("phase") == "Running" and ready and not metadata.get("deletionTimestamp"):
            return str(metadata["name"])
    raise PimlError(
        Problem(what, "no ready pod in the cluster", "see `piml status`, or wait for `piml up` to finish"), EXIT_FAILED
    )


def ready_pod(kube, namespace: str, selector: str, what: str) -> str:
    """The name of a running, ready pod matching `selector`; PimlError naming `what` when there is none."""
    pods = kube.request("GET", f"/api/v1/namespaces/{namespace}/pods", {"labelSelector": selector})
    return first_ready((pods or {}).get("items", []), f"{namespace}/{what}")


def run_in_pod(
    kube, namespace: str, pod: str, command: list[str], timeout: float, stdin: IO[bytes] | None = None,
    stdout: IO[bytes] | None = None,
) -> Finished:  # fmt: skip
    """Run `command` in `pod` (its first container), `stdin`'s bytes in, its stdout into `stdout`; returns its exit
    code and stderr. PimlError naming the pod when it does not finish within `timeout` seconds."""
    from kubernetes import client as k8s
    from kubernetes.stream import stream

    from piml.queue.tunnel import open_stream

    api = k8s.CoreV1Api(kube.api_client)
    where = f"{namespace}/{pod}"
    socket: Any = open_stream(
        stream, api.connect_get_namespaced_pod_exec, pod, namespace, command=command, stdin=stdin is not None,
        stdout=True, stderr=True, tty=False, binary=True, _preload_content=False,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    stderr = bytearray()

    def drain(wait: float) -> None:
        socket.update(timeout=wait)
        out = socket.read_stdout(timeout=0)
        if out and stdout is not None:
            stdout.write(out)
        stderr.extend(socket.read_stderr(timeout=0))
        del stderr[: max(0, len(stderr) - 4096)]
        if time.monotonic() > deadline:
            raise PimlError(
                Problem(where, f"`{command[0]}` did not finish within {timeout:.0f} s", "see the pod's logs"),
                EXIT_FAILED,
            )

    try:
        if stdin is not None:
            if socket.subprotocol != V5:
                raise PimlError(
                    Problem(where, "the API server cannot close an exec's input (no v5 streams)",
                            "upgrade k3s to 1.30 or later: `piml upgrade`"), EXIT_FAILED,
                )  # fmt: skip
            while chunk := stdin.read(CHUNK):
                socket.write_stdin(chunk)
                drain(0)  # its output too, so neither side waits on a full buffer
            socket.close_channel(0)
        while socket.is_open():
            drain(1)
        drain(0)
        code, why = _exit_status(socket.read_channel(3))
    finally:
        socket.close()
    return Finished(code, (stderr.decode(errors="replace") + why).strip())


def _exit_status(raw: bytes) -> tuple[int, str]:
    """The command's exit code from the Status the API server sends on channel 3 as the stream ends, and the reason
    when it did not run at all (its executable missing): then -1."""
    import json

    try:
        status = json.loads(raw or b"{}")
    except ValueError:
        status = {}
    if status.get("status") == "Success":
        return 0, ""
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode" and str(cause.get("message", "")).isdigit():
            return int(cause["message"]), ""
    return -1, "\n" + str(status.get("message") or "the stream ended with no exit status")
