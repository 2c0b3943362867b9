"""`piml submit` / `piml jobs` with --queue-url against real Redis, the Python helper, and the port-forward pieces."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from piml.errors import PimlError
from tests.queue.helpers import assert_no_secrets, run_piml, run_runner, start_runner


def test_submit_and_jobs_with_queue_url(broker, redis_server, runner_env, registered_model, dataset, tmp_path):
    env = {**runner_env}
    env.pop("PIML_QUEUE_URL")
    url = redis_server.url
    out = run_piml(env, "submit", registered_model.uri, str(dataset), "--param", "batch_size=50", "--queue-url", url)
    assert out.returncode == 0, out.stderr
    request_id = out.stdout.strip()
    assert broker.get(request_id)["state"] == "queued"
    listed = json.loads(run_piml(env, "jobs", "--json", "--queue-url", url).stdout)
    assert [j["id"] for j in listed["jobs"]] == [request_id]
    job = listed["jobs"][0]
    assert {"id", "state", "model", "input", "run_id", "error", "submitted_at", "node", "run_url", "attempts"} <= set(
        job
    )
    assert job["state"] == "queued" and job["params"] == {"batch_size": 50} and job["run_id"] is None
    assert run_runner(runner_env, "--once").returncode == 0
    one = json.loads(run_piml(env, "jobs", request_id, "--json", "--queue-url", url).stdout)["jobs"][0]
    assert one["state"] == "succeeded" and one["run_id"] and one["rows"] == 450
    table = run_piml({**env, "PIML_QUEUE_URL": url, "COLUMNS": "400"}, "jobs")  # the URL from the environment
    assert (
        table.returncode == 0
        and request_id in table.stdout
        and "succeeded" in table.stdout
        and one["run_id"] in table.stdout
    )
    detail = run_piml(env, "jobs", request_id, "--queue-url", url)
    assert "state" in detail.stdout and "succeeded" in detail.stdout


def test_submit_wait_follows_to_the_end(broker, redis_server, runner_env, registered_model, dataset, tmp_path):
    env = {k: v for k, v in runner_env.items() if k != "PIML_QUEUE_URL"}
    runner = start_runner(runner_env, "--drain", "--wait", "30", log=tmp_path / "runner.log")
    try:
        ok = run_piml(
            env,
            "submit",
            registered_model.alias_uri,
            str(dataset),
            "--wait",
            "--timeout",
            "90",
            "--queue-url",
            redis_server.url,
        )
        assert ok.returncode == 0, ok.stderr
        request_id, summary = ok.stdout.strip().splitlines()
        assert summary.startswith("450 rows in ") and broker.get(request_id)["run_id"] in summary
        assert "queued" in ok.stderr and "running on " in ok.stderr and "succeeded" in ok.stderr
        bad = run_piml(
            env,
            "submit",
            registered_model.uri,
            str(tmp_path / "nothing.csv"),
            "--wait",
            "--timeout",
            "90",
            "--queue-url",
            redis_server.url,
        )
        assert bad.returncode == 1
        assert (
            bad.stderr.strip()
            .splitlines()[-1]
            .endswith(
                f"failed after 3 attempt(s): input: no such file {tmp_path / 'nothing.csv'}; "
                f"see `piml jobs {bad.stdout.strip()}` and the MLflow run"
            )
        )
    finally:
        runner.terminate()
        runner.wait(timeout=30)
    assert_no_secrets((tmp_path / "runner.log").read_text())


def test_submit_refuses_bad_requests_before_queueing(broker, redis_server, runner_env):
    env = {k: v for k, v in runner_env.items() if k != "PIML_QUEUE_URL"}
    for args, message in [
        (
            ["models:/iris", "/d/x.csv"],
            "error: model: 'models:/iris' is not a registered model URI; write models:/NAME/VERSION",
        ),
        (["models:/iris/1", "/d/x.xlsx"], "error: input: '/d/x.xlsx' is not a .csv, .parquet or .jsonl file"),
        (["models:/iris/1", "/d/x.csv", "--param", "oops"], "error: --param: 'oops' is not NAME=VALUE"),
        (
            ["models:/iris/1", "/d/x.csv", "--queue-url", "http://x"],
            "error: --queue-url: 'http://x' is not a broker URL",
        ),
    ]:
        out = run_piml(env, "submit", *args, *(["--queue-url", redis_server.url] if "--queue-url" not in args else []))
        assert out.returncode == 2 and out.stderr.strip().startswith(message) and "Traceback" not in out.stderr, (
            out.stderr
        )
    assert broker.queue_length() == 0
    out = run_piml(env, "jobs", "nope", "--queue-url", redis_server.url)
    assert out.returncode == 2 and "nope: no such request" in out.stderr
    wrong = redis_server.url.replace("redis://:", "redis://:x")
    out = run_piml(env, "jobs", "--queue-url", wrong)
    assert out.returncode == 1 and "Redis refused the password" in out.stderr and ":***@" in out.stderr
    dup = run_piml(env, "submit", "models:/m/1", "/d/x.csv", "--id", "same", "--queue-url", redis_server.url)
    again = run_piml(env, "submit", "models:/m/1", "/d/x.csv", "--id", "same", "--queue-url", redis_server.url)
    assert dup.returncode == 0 and again.returncode == 2 and "a request 'same' exists already" in again.stderr


def test_python_helper(broker, redis_server, runner_env, registered_model, dataset, tmp_path, monkeypatch):
    from piml import client

    monkeypatch.setenv("PIML_QUEUE_URL", redis_server.url)
    request_id = client.submit(registered_model.uri, str(dataset), {"batch_size": 1000})
    assert client.status(request_id)["state"] == "queued" and client.status("unknown") is None
    runner = start_runner(runner_env, "--once", log=tmp_path / "runner.log")
    try:
        job = client.wait(request_id, timeout=90)
    finally:
        runner.wait(timeout=60)
    assert job["state"] == "succeeded" and job["run_id"]
    with pytest.raises(PimlError, match="still queued after 0.2 s"):
        client.submit(registered_model.uri, str(dataset), wait=True, timeout=0.2)


# -- the port-forward path, piece by piece (no Kubernetes API server here) ------------------------------


def _pod(name, phase="Running", ready="True", deleting=None):
    metadata = {"name": name, **({"deletionTimestamp": deleting} if deleting else {})}
    return {"metadata": metadata, "status": {"phase": phase, "conditions": [{"type": "Ready", "status": ready}]}}


class _PodLister:
    """A CoreV1Api's pod list, as the API's JSON (pick_pod reads it raw)."""

    def __init__(self, pods):
        self.pods = pods

    def list_namespaced_pod(self, namespace, label_selector, _request_timeout, _preload_content):
        assert _request_timeout and _preload_content is False
        return SimpleNamespace(data=json.dumps({"items": self.pods}).encode())


def test_tunnel_picks_a_ready_pod_and_reads_the_secret():
    from piml.queue.tunnel import pick_pod, secret_password

    pods = [
        _pod("redis-a", phase="Pending"),
        _pod("redis-b", ready="False"),
        _pod("redis-c", deleting="2026-12-04T00:00:00Z"),
        _pod("redis-d"),
    ]
    assert pick_pod(_PodLister(pods), "piml", "app=redis", "redis") == "redis-d"
    with pytest.raises(PimlError, match="redis: no ready pod"):
        pick_pod(_PodLister(pods[:3]), "piml", "app=redis", "redis")
    secret = SimpleNamespace(data={"password": base64.b64encode(b"pw-123").decode()})
    assert secret_password(secret, "redis") == "pw-123"
    with pytest.raises(PimlError, match="Secret redis: has no password"):
        secret_password(SimpleNamespace(data=None), "redis")


def test_forwarder_bridges_loopback_connections(broker, redis_server):
    """The local end of the port-forward: each connection gets its own remote socket (here: real Redis)."""
    from piml.queue import connect
    from piml.queue.tunnel import Forwarder

    opened = []

    def open_remote():
        sock = socket.create_connection(("127.0.0.1", redis_server.port), timeout=5)
        opened.append(sock)
        return sock

    forwarder = Forwarder(open_remote)
    try:
        tunnelled = connect(f"redis://127.0.0.1:{forwarder.port}/0", password=redis_server.password)
        from piml.queue import make_request

        request = make_request("models:/m/1", "/d/x.csv")
        tunnelled.submit(request)
        assert broker.get(request.id)["state"] == "queued"
        assert tunnelled.jobs()[0]["id"] == request.id
        tunnelled.close()
        assert opened
    finally:
        forwarder.close()


def test_no_cluster_no_queue_url_is_one_clear_line(tmp_path, runner_env):
    env = {k: v for k, v in runner_env.items() if k != "PIML_QUEUE_URL"}
    init = subprocess.run(
        [sys.executable, "-m", "piml", "init", "p", "-n", "pi1=198.18.0.11"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr
    out = run_piml(env, "jobs", "-C", str(tmp_path / "p"))
    assert out.returncode == 2 and "kubeconfig: no kubeconfig; run `piml up` first, or pass --queue-url" in out.stderr


def test_help_has_examples_and_loads_no_queue_libraries():
    for command in ("submit", "jobs"):
        out = subprocess.run(
            [sys.executable, "-m", "piml", command, "--help"], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and "Examples:\n    piml " + command in out.stdout
    code = (
        "import sys\nfrom piml.entry import main\nsys.argv=['piml','--help']\ntry:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('LOADED=' + ','.join(m for m in ('redis', 'pika', 'mlflow', 'pandas', 'kubernetes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("LOADED="), out.stdout[-200:]
