"""The API server and the broker misbehaving (issue 16, and issue 11's "a half-dead API server"): a kubeconfig
that is garbage, an API server that accepts connections and never answers, a broker killed while `submit --wait`
follows a request, a damaged job record, text with terminal escapes in a job's error. Each command ends within
its bound with one line naming what failed, never a traceback or an "internal error".
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.misuse import one_error
from tests.misuse.rack import LoopbackListener
from tests.ports import free_port
from tests.queue.helpers import wait_for

REQUEST_BOUND = 15  # piml.kube.client.REQUEST_TIMEOUT; one retry on a dropped connection doubles it
NO_ANSWER = re.compile(r"no answer within \d+ s")
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: default
  cluster: {{server: "https://127.0.0.1:{port}", insecure-skip-tls-verify: true}}
users:
- name: default
  user: {{token: not-a-real-token}}
contexts:
- name: default
  context: {{cluster: default, user: default}}
current-context: default
"""


class HalfDeadServer(LoopbackListener):
    """Accepts every connection and never sends a byte: an API server whose process hangs."""

    def __init__(self):
        self.held: list[socket.socket] = []
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        self.held.append(conn)

    def close(self) -> None:
        super().close()
        for conn in self.held:
            conn.close()


def run_all(
    rack, commands: dict[str, tuple[str, ...]], bound: float
) -> dict[str, tuple[subprocess.CompletedProcess, float]]:
    """Run the commands at the same time (each waits on the same dead server); their results and durations."""
    results = {}

    def one(name: str, args: tuple[str, ...]) -> None:
        start = time.monotonic()
        results[name] = (rack.piml(*args, timeout=bound + 30), time.monotonic() - start)

    threads = [threading.Thread(target=one, args=item) for item in commands.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(bound + 60)
    return results


def last_error(result: subprocess.CompletedProcess) -> str:
    said = result.stdout + result.stderr
    assert "Traceback" not in said and "internal error" not in said, said[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors, said[-3000:]
    return errors[-1]


def test_a_half_dead_api_server_ends_every_command_within_its_bound_with_one_line(rack):
    server = HalfDeadServer()
    try:
        (rack.root / ".piml" / "kubeconfig").write_text(KUBECONFIG.format(port=server.port))
        os.chmod(rack.root / ".piml" / "kubeconfig", 0o600)
        commands = {
            "jobs": ("jobs",),
            "submit": ("submit", "models:/iris/1", "/data/iris.csv"),
            "teardown": ("teardown", "--yes"),
            "up --only platform": ("up", "--only", "platform"),
            "status": ("status",),
            "check": ("check",),
            "plan": ("plan",),
        }
        bound = 2 * REQUEST_BOUND + 10
        results = run_all(rack, commands, bound)
    finally:
        server.close()
    for name, (result, seconds) in results.items():
        assert seconds < bound, f"{name} took {seconds:.0f} s"
        said = result.stdout + result.stderr
        assert "Traceback" not in said and "internal error" not in said, f"{name}:\n{said[-3000:]}"
        if name == "plan":  # a plan is made without the cluster, and says what it could not know
            assert result.returncode == 0 and NO_ANSWER.search(said), said[-3000:]
            continue
        assert result.returncode == 1, f"{name}: exit {result.returncode}\n{said[-3000:]}"
        assert NO_ANSWER.search(said), f"{name}:\n{said[-3000:]}"
        assert f"127.0.0.1:{server.port}" in said, f"{name}:\n{said[-3000:]}"


GARBAGE_KUBECONFIGS = {
    "unclosed YAML": "garbage: [\n",
    "plain text": "just some text\n",
    "clusters not a list": "apiVersion: v1\nkind: Config\nclusters: 5\n",
    "no current context": "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n",
    "binary": "\x00\x01\x02\xff",
}


@pytest.mark.parametrize("content", GARBAGE_KUBECONFIGS.values(), ids=GARBAGE_KUBECONFIGS.keys())
@pytest.mark.parametrize(
    "command",
    [("jobs",), ("submit", "models:/iris/1", "/data/iris.csv"), ("teardown", "--yes"), ("plan",)],
    ids=" ".join,
)
def test_a_garbage_kubeconfig_is_one_line_naming_it(rack, content, command):
    kubeconfig = rack.root / ".piml" / "kubeconfig"
    kubeconfig.write_bytes(content.encode("latin-1"))
    os.chmod(kubeconfig, 0o600)
    result = rack.piml(*command)
    said = result.stdout + result.stderr
    assert "Traceback" not in said and "internal error" not in said, said[-3000:]
    assert ".piml/kubeconfig" in said and "kubeconfig" in said, said[-3000:]
    if command == ("plan",):  # the plan does without the cluster and says so
        assert result.returncode == 0, said[-3000:]
    else:
        assert result.returncode == 1, said[-3000:]
        assert "not a usable kubeconfig" in last_error(result)


# -- the broker -----------------------------------------------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own, to kill."""
    if not shutil.which("redis-server"):
        pytest.fail("redis-server is not installed: run tests/queue/install-deps.sh as root")
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    import redis

    client = redis.Redis(port=port, socket_connect_timeout=1)
    try:
        wait_for(client.ping, 20, "redis-server", proc)
        yield proc, f"redis://127.0.0.1:{port}/0", client
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def submit_waiting_then(rack, url: str, interrupt) -> tuple[str, subprocess.CompletedProcess]:
    """`piml submit --wait` on a broker no runner serves; once it has queued and waited a moment, `interrupt()`."""
    waiting = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "piml",
            "submit",
            "models:/iris/1",
            "/data/iris.csv",
            "--wait",
            "--timeout",
            "120",
            "--queue-url",
            url,
        ],
        cwd=rack.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        request_id = waiting.stdout.readline().strip()  # printed once queued
        assert request_id, waiting.stderr.read() if waiting.poll() is not None else "no id"
        time.sleep(1.5)
        interrupt(waiting)
        out, err = waiting.communicate(timeout=60)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert "Traceback" not in out + err and "internal error" not in out + err, out + err
    return request_id, subprocess.CompletedProcess(waiting.args, waiting.returncode, out, err)


def test_the_broker_killed_during_submit_wait_is_one_line(rack, own_redis):
    broker, url, _ = own_redis
    request_id, result = submit_waiting_then(rack, url, lambda _: broker.send_signal(signal.SIGKILL))
    assert result.returncode == 1, result.stdout + result.stderr
    line = last_error(result)
    assert "broker went away" in line and request_id in line, line


def test_one_damaged_record_does_not_break_the_listing(rack, own_redis):
    _, url, client = own_redis
    good = rack.piml("submit", "models:/iris/1", "/data/iris.csv", "--queue-url", url).stdout.strip()
    damaged = rack.piml("submit", "models:/iris/2", "/data/iris.csv", "--queue-url", url).stdout.strip()
    assert good and damaged
    client.hset(f"piml:job:{damaged}", mapping={"attempts": "many", "seconds": "\xff", "submitted_at": b"\xff\xfe"})
    client.lpush("piml:dead", b"not json", b"[1, 2]")
    listing = rack.piml("jobs", "--queue-url", url)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    assert good in listing.stdout and damaged in listing.stdout
    as_json = rack.piml("jobs", "--json", "--queue-url", url)
    assert as_json.returncode == 0 and '"attempts": null' in as_json.stdout, as_json.stdout + as_json.stderr


def test_escape_sequences_in_a_jobs_error_never_reach_the_terminal(rack, own_redis):
    _, url, client = own_redis
    request_id = rack.piml("submit", "models:/iris/1", "/data/iris.csv", "--queue-url", url).stdout.strip()
    hostile = "boom\x1b[2J\x1b]0;owned\x07\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\\r\x9b31m"
    client.hset(f"piml:job:{request_id}", mapping={"state": "failed", "error": hostile, "node": "pi1\x1b[8m"})
    for args in (("jobs",), ("jobs", request_id)):
        result = rack.piml(*args, "--queue-url", url)
        assert result.returncode == 0, result.stderr
        assert not any(c in result.stdout for c in "\x1b\x07\x9b\r"), repr(result.stdout)
        assert "boom" in result.stdout and "click" in result.stdout
    as_json = rack.piml("jobs", "--json", "--queue-url", url)  # JSON escapes them: a program gets the text as it is
    assert "\\u001b[2J" in as_json.stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (("jobs", "-n", "0"), ("--limit", "0")),
        (("jobs", "-n", "-5"), ("--limit", "-5")),
        (("submit", "models:/a/1", "/x.csv", "--wait", "--timeout", "-5"), ("--timeout",)),
        (("submit", "models:/a/1", "/x.csv", "--wait", "--timeout", "nan"), ("--timeout",)),
        (("submit", "models:/a/1", "/x.csv", "--wait", "--timeout", "0"), ("--timeout",)),
        (
            ("submit", "models:/a/1", "/x.csv", "-p", "batch_size=5", "-p", "batch_size=6"),
            ("--param", "batch_size", "twice"),
        ),
        (("jobs", "--queue-url", "redis://127.0.0.1:99999/0"), ("--queue-url", "Port")),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) and v and v[0] in ("jobs", "submit") else "",
)
def test_values_that_cannot_be_right_are_refused_before_the_broker_is_reached(rack, args, words):
    """The tripwire nodes and the absent kubeconfig: nothing is reached; the value is what the line names."""
    one_error(rack.piml(*args), *words)
    assert rack.knocks() == {}


def test_ctrl_c_while_submit_waits_leaves_the_request_queued(rack, own_redis):
    """Mid-work SIGINT: one word, exit 130, and the request is still there for `piml jobs` (nothing lost)."""
    _, url, client = own_redis
    request_id, result = submit_waiting_then(rack, url, lambda waiting: waiting.send_signal(signal.SIGINT))
    assert result.returncode == 130 and result.stderr.strip().splitlines()[-1] == "interrupted", result
    assert client.hget(f"piml:job:{request_id}", "state") == b"queued"
    assert client.llen("piml:queue") == 1
