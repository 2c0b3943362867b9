"""Odd environments and signals (issue 16): ascii-only output, LANG=C, no HOME, no terminal, paths too long for the
file system, Ctrl-C at start-up, and nodes whose SSH server accepts and then hangs up. Nothing prints a traceback.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.misuse import one_error
from tests.misuse.rack import LoopbackListener


def clean(result: subprocess.CompletedProcess) -> str:
    said = result.stdout + result.stderr
    assert "Traceback" not in said and "internal error" not in said, said[-3000:]
    return said


@pytest.mark.parametrize(
    "env",
    [
        {"PYTHONIOENCODING": "ascii"},
        {"PYTHONIOENCODING": "latin-1"},
        {"LANG": "C", "LC_ALL": "C"},
        {"HOME": None},
        {"HOME": "/nonexistent"},
        {"TERM": "dumb"},
    ],
    ids=str,
)
@pytest.mark.parametrize(
    "command", [("plan",), ("inventory", "show"), ("render",), ("up", "--dry-run"), ("jobs", "-n", "0")], ids=" ".join
)
def test_odd_environments_still_print(rack, env, command):
    """The plan's table has ≤, ×, °: a terminal that cannot show them gets '?', not a UnicodeEncodeError."""
    result = rack.piml(*command, **env)
    clean(result)
    assert result.returncode == (2 if command[0] == "jobs" else 0), result.stdout + result.stderr


def ctrl_c_after(rack, seconds: float, *args: str) -> tuple[int, str, str]:
    """`piml ARGS` with stdout a pipe, sent SIGINT after `seconds`: (exit code, stdout, stderr), no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "piml", *args],
        cwd=rack.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=rack.env(),
    )
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in err, out + err
    return proc.returncode, out, err


def test_status_watch_without_a_terminal_appends_each_refresh(rack):
    """Piped or logged, `status --watch` prints a stamped block per refresh (rich's live view would print nothing)."""
    code, out, err = ctrl_c_after(rack, 6, "status", "--watch", "--interval", "1")
    assert out.count("--- ") >= 2 and out.count("s1") >= 2, out + err
    assert code == 1  # the tripwire nodes are not healthy


def test_status_watch_json_is_one_object_a_line(rack):
    code, out, err = ctrl_c_after(rack, 5, "status", "--watch", "--interval", "1", "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) >= 2 and all({"at", "nodes", "cluster"} <= set(line) for line in lines), out + err


@pytest.fixture(scope="module")
def entry_loaded_after() -> float:
    """How long a Python takes to load piml.entry here: before that, a Ctrl-C is Python's own (runpy's traceback)."""
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", "import piml.entry"], check=True, timeout=30)
    return time.monotonic() - start


@pytest.mark.parametrize("factor", [1.5, 3, 6, 12, 24])
def test_ctrl_c_at_start_up_is_one_word_not_a_traceback(rack, entry_loaded_after, factor):
    """From piml's first line on (typer, rich and the command's imports, then its work), Ctrl-C is one word."""
    code, _, err = ctrl_c_after(rack, entry_loaded_after * factor, "plan")
    # 0: it finished before the signal came; -SIGINT: Python ends itself by the signal after an interrupted
    # import, which a shell shows as 130 too
    assert code in (0, 130, -signal.SIGINT), (code, err)
    if code != 0:
        assert err.strip() == "interrupted", err


LONG = "x" * 300  # one path component longer than NAME_MAX (255)


@pytest.mark.parametrize(
    "args",
    [
        ("init", LONG, "--node", "a=10.0.0.1"),
        ("plan", "-C", LONG),
        ("render", "--out", LONG),
        ("plan", "-i", f"/tmp/{LONG}.yml"),
        ("render", "--out", f"a/{LONG}/b"),
    ],
    ids=lambda a: a[0] + " " + a[1],
)
def test_a_path_too_long_is_one_line(rack, args):
    line = one_error(rack.piml(*args))
    assert "too long" in line.lower() or "no such" in line.lower() or "not found" in line.lower(), line


class HangingSSH(LoopbackListener):
    """A loopback SSH "server" that accepts, and then: `banner` sends an OpenSSH banner and hangs up on the
    client's; `garbage` answers the banner with junk packets; `silent` closes at once."""

    def __init__(self, mode: str):
        self.mode = mode
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            if self.mode in ("banner", "garbage"):
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
                conn.recv(4096)
            if self.mode == "garbage":
                conn.sendall(b"\x00\x00\x01\x00garbage-garbage" * 4)
        except OSError:
            pass
        finally:
            conn.close()


@pytest.mark.parametrize("mode", ["banner", "garbage", "silent"])
@pytest.mark.parametrize("command", [("status",), ("up", "--only", "preflight"), ("plan", "--reach")], ids=" ".join)
def test_a_node_that_hangs_up_during_the_handshake_is_one_line_naming_it(tmp_path, mode, command):
    from tests.misuse.rack import Rack

    rack = Rack(tmp_path)
    server = HangingSSH(mode)
    try:
        hosts = rack.root / "inventory/hosts.yml"
        hosts.write_text(
            hosts.read_text().replace(f"ansible_port: {rack.wires['s1'].port}", f"ansible_port: {server.port}")
        )
        result = rack.piml(*command, timeout=90)
    finally:
        server.close()
        rack.close()
    said = clean(result)
    assert result.returncode in (1, 2), said
    node_lines = [line for line in said.splitlines() if f"127.0.0.1:{server.port}" in line]
    assert node_lines, said[-3000:]
    assert "[Errno" not in said and "EOFError" not in said, said[-3000:]
