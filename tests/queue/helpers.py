"""Helpers shared by the queue tests and their fixtures (one module, so SECRETS is one list)."""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECRETS: list[str] = []  # the Redis and MLflow admin passwords: never in anything piml prints


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            result = check()
            if result:
                return result
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    if proc is not None and proc.poll() is not None:
        # the last line first: CI's summary keeps a failure's first lines, and a traceback's reason is its last
        last = next((line for line in reversed(tail.splitlines()) if line.strip()), "")
        pytest.fail(f"{what} exited with code {proc.returncode} before it was ready: {last}\n{tail}")
    pytest.fail(f"{what} not ready within {timeout} s\n{tail}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def assert_no_secrets(text: str) -> None:
    leaked = [i for i, value in enumerate(SECRETS) if value in text]
    assert not leaked, "a password appeared in piml's output"


def run_runner(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "piml.runner", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert_no_secrets(out.stdout + out.stderr)
    return out


def start_runner(env: dict, *args: str, log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen(
        [sys.executable, "-m", "piml.runner", *args],
        env=env,
        cwd=REPO,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@contextmanager
def loopback_http(handler: type):
    """A threaded HTTP server on 127.0.0.1 serving `handler`; yields its port; always shut down."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def answering_http(answer, hold: float = 0.0):
    """A loopback HTTP server answering every GET with answer(path, headers) -> (status, text or bytes),
    each answer held for up to `hold` s or until the yielded event is set. Yields (base URL, that event)."""
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if hold:
                release.wait(hold)
            status, body = answer(self.path, self.headers)
            data = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    with loopback_http(Handler) as port:
        try:
            yield f"http://127.0.0.1:{port}", release
        finally:
            release.set()


@contextmanager
def held_dataset(path: Path):
    """Serve `path` over loopback HTTP, holding every answer until the test sets the returned event
    (bounded: 60 s). A runner reading it stays mid-request for as long as a test needs, so "kill it
    mid-request" does not race a small dataset's quick run. Yields (url, release event)."""
    with answering_http(lambda path_, headers: (200, path.read_bytes()), hold=60) as (url, release):
        yield f"{url}/{path.name}", release


def kill_runner_mid_request(broker, env: dict, request, log: Path) -> None:
    """Start a runner, wait until it holds `request` (state running), then SIGKILL it, as a node loss would."""
    victim = start_runner(env, "--once", log=log)
    try:
        wait_for(
            lambda: broker.get(request.id)["state"] == "running", 30, "the first runner to start the request", victim
        )
    finally:
        if victim.poll() is None:
            os.killpg(victim.pid, signal.SIGKILL)
        victim.wait(timeout=10)


def run_piml(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "piml", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert_no_secrets(out.stdout + out.stderr)
    return out
