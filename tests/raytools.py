"""Helpers for the tests that start real Ray and Dask processes (tests/health, tests/serve): end a process group
and whatever it left behind, ask a Ray dashboard whether it answers and how many nodes are alive."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

VENV_BIN = str(Path(sys.executable).parent)
MARKER = "PIML_TEST_SERVICE"


def kill_marked(marker: str) -> None:
    """SIGKILL every process whose environment has MARKER=marker (the fixture's own processes only)."""
    needle = f"{MARKER}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def end(proc: subprocess.Popen, marker: str) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    kill_marked(marker)


def http_ok(url: str, token: str | None = None) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=2) as response:
        return response.status == 200


def alive_nodes(url: str, token: str) -> int:
    import json

    request = urllib.request.Request(f"{url}/api/v0/nodes", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return sum(node["state"] == "ALIVE" for node in json.load(response)["data"]["result"]["result"])
