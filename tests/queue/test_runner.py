"""The runner as a real process against real Redis and a real MLflow server with basic auth."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
from functools import partial

import pandas as pd
import pytest

from piml.queue import make_request
from tests.queue.helpers import assert_no_secrets, held_dataset, kill_runner_mid_request, run_runner


def predictions_of(run_id: str, name: str, tmp_path) -> pd.DataFrame:
    import mlflow

    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(tmp_path / "got"))
    if name.endswith(".parquet"):
        return pd.read_parquet(local)
    if name.endswith(".jsonl"):
        return pd.read_json(local, lines=True)
    return pd.read_csv(local)


def assert_predictions(job, model, data: pd.DataFrame, tmp_path, name="predictions.csv"):
    import mlflow

    assert job["state"] == "succeeded", job
    assert job["run_id"] and job["error"] is None and job["rows"] == len(data)
    got = predictions_of(job["run_id"], name, tmp_path)
    expected = model.sklearn.predict(data[model.features])
    assert list(got["prediction"]) == list(expected)
    run = mlflow.get_run(job["run_id"])
    assert run.info.status == "FINISHED"
    assert mlflow.get_experiment(run.info.experiment_id).name == "piml-jobs"
    assert run.data.params["request_id"] == job["id"] and run.data.params["model"] == job["model"]
    assert run.data.params["input"] == job["input"]
    assert run.data.metrics["rows"] == len(data) and run.data.metrics["seconds"] > 0


@pytest.fixture(scope="module")
def http_root(tmp_path_factory):
    """A loopback HTTP server for datasets given by URL."""
    root = tmp_path_factory.mktemp("www")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_csv_path_succeeds_and_predictions_equal_model_predict(broker, runner_env, registered_model, dataset, tmp_path):
    request = make_request(registered_model.uri, str(dataset), {"batch_size": 100})
    broker.submit(request)
    assert broker.get(request.id)["state"] == "queued"
    out = run_runner(runner_env, "--once")
    assert out.returncode == 0, out.stderr
    job = broker.get(request.id)
    assert job["attempts"] == 1 and job["node"] and job["finished_at"] >= job["started_at"] >= job["submitted_at"]
    assert job["run_url"].startswith(os.environ["MLFLOW_TRACKING_URI"]) and job["run_id"] in job["run_url"]
    assert_predictions(job, registered_model, pd.read_csv(dataset), tmp_path)
    assert broker.queue_length() == 0 and not broker.dead_letters()
    assert not broker.r.keys("piml:processing:*")


def test_artifact_parquet_and_http_jsonl_inputs(broker, runner_env, registered_model, dataset, http_root, tmp_path):
    """The alias URI, a runs:/ artifact URI (Parquet) and an http URL (JSON lines), with outputs in each format."""
    import mlflow

    data = pd.read_csv(dataset)
    parquet = tmp_path / "iris.parquet"
    data.to_parquet(parquet)
    mlflow.set_experiment("piml-tests")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(parquet), "data")
    root, base = http_root
    data.to_json(root / "iris.jsonl", orient="records", lines=True)
    first = make_request(
        registered_model.alias_uri, f"runs:/{run.info.run_id}/data/iris.parquet", output="out/p.parquet"
    )
    second = make_request(registered_model.uri, f"{base}/iris.jsonl", output="p.jsonl")
    broker.submit(first)
    broker.submit(second)
    out = run_runner(runner_env, "--drain", "--wait", "1")
    assert out.returncode == 0, out.stderr
    assert_predictions(broker.get(first.id), registered_model, data, tmp_path / "1", "out/p.parquet")
    assert_predictions(broker.get(second.id), registered_model, data, tmp_path / "2", "p.jsonl")


def test_malformed_request_fails_at_once(broker, runner_env):
    broker.r.lpush("piml:queue", b'{"id": "bad-1", "model": "mlflow:/nope", "input": "x.csv"}')
    broker.r.lpush("piml:queue", b"\xff not json")
    out = run_runner(runner_env, "--drain", "--wait", "1")
    assert out.returncode == 0, out.stderr
    job = broker.get("bad-1")
    assert job["state"] == "failed" and job["attempts"] == 1 and job["dead_letter"]
    assert job["error"].startswith(
        "malformed request: model: 'mlflow:/nope' is not an MLflow model URI; write models:/"
    )
    letters = {letter["id"]: letter for letter in broker.dead_letters()}
    assert len(letters) == 2 and "bad-1" in letters
    (other,) = [letter for key, letter in letters.items() if key != "bad-1"]
    assert (
        other["id"].startswith("invalid-")
        and other["error"] == "malformed request: request: is not UTF-8 text; send a JSON object encoded as UTF-8"
    )
    assert broker.get(other["id"])["state"] == "failed"  # listed by `piml jobs` too
    assert broker.queue_length() == 0


def test_unknown_model_and_unreadable_dataset_are_dead_lettered_after_retries(
    broker, runner_env, registered_model, dataset, tmp_path
):
    """Requests that always fail: tried 1 + PIML_RETRIES (2) times, then parked with their error."""
    garbage = tmp_path / "broken.parquet"
    garbage.write_text("this is not parquet\n")
    unknown = make_request("models:/no-such-model/3", str(dataset))
    broken = make_request(registered_model.uri, str(garbage))
    missing = make_request(registered_model.uri, str(tmp_path / "missing.csv"))
    for request in (unknown, broken, missing):
        broker.submit(request)
    out = run_runner(runner_env, "--drain", "--wait", "1")
    assert out.returncode == 0, out.stderr
    jobs = {r.id: broker.get(r.id) for r in (unknown, broken, missing)}
    for job in jobs.values():
        assert job["state"] == "failed" and job["attempts"] == 3 and job["dead_letter"], job
        assert job["run_id"]  # each attempt's MLflow run is there to look at
    assert jobs[unknown.id]["error"].startswith("model: cannot load models:/no-such-model/3:")
    assert "no-such-model" in jobs[unknown.id]["error"].split(":", 2)[2]
    assert jobs[broken.id]["error"].startswith("input: cannot read broken.parquet as parquet:")
    assert jobs[missing.id]["error"] == f"input: no such file {tmp_path / 'missing.csv'}"
    letters = broker.dead_letters()
    assert {letter["id"] for letter in letters} == set(jobs) and all(letter["attempts"] == 3 for letter in letters)
    assert (
        json.loads(next(letter for letter in letters if letter["id"] == unknown.id)["message"])["model"]
        == unknown.model
    )


def test_killed_runner_request_is_taken_again_and_succeeds(broker, runner_env, registered_model, dataset, tmp_path):
    with held_dataset(dataset) as (url, release):  # the victim waits on its data until killed
        request = make_request(registered_model.uri, url)
        broker.submit(request)
        kill_runner_mid_request(broker, {**runner_env, "PIML_RUNNER_ID": "victim"}, request, tmp_path / "victim.log")
        assert broker.get(request.id)["state"] == "running"  # killed mid-request: nothing recorded it finished
        assert broker.r.lrange("piml:processing:victim", 0, -1) == [request.to_json().encode()]
        assert broker.queue_length() == 0  # not in the queue: KEDA would start no Job; the lease must expire
        release.set()
        out = run_runner({**runner_env, "PIML_RUNNER_ID": "rescuer"}, "--once")
    assert out.returncode == 0, out.stderr
    job = broker.get(request.id)
    assert job["attempts"] == 2 and job["runner"] == "rescuer"
    assert_predictions(job, registered_model, pd.read_csv(dataset), tmp_path)
    assert not broker.r.exists("piml:processing:victim") and b"victim" not in broker.r.smembers("piml:runners")
    assert_no_secrets((tmp_path / "victim.log").read_text())


def test_restarted_runner_resumes_its_own_request(broker, runner_env, registered_model, dataset, tmp_path):
    """A Job's next pod (same runner id) takes its own unfinished request at once, without waiting for the lease."""
    request = make_request(registered_model.uri, str(dataset))
    broker.submit(request)
    broker.r.lmove("piml:queue", "piml:processing:job-7", "RIGHT", "LEFT")
    broker.r.hincrby(f"piml:job:{request.id}", "attempts", 1)
    broker.heartbeat("job-7")
    started = time.monotonic()
    out = run_runner({**runner_env, "PIML_RUNNER_ID": "job-7", "PIML_LEASE_SECONDS": "60"}, "--once")
    assert out.returncode == 0, out.stderr
    assert broker.get(request.id)["state"] == "succeeded" and broker.get(request.id)["attempts"] == 2
    assert time.monotonic() - started < 60


def test_runner_without_requests_exits_quickly_and_broker_errors_are_one_line(runner_env):
    started = time.monotonic()
    out = run_runner(runner_env, "--once", "--wait", "0.5")
    assert out.returncode == 0 and "no request within 0.5 s" in out.stderr
    assert time.monotonic() - started < 30
    bad = run_runner(
        {**runner_env, "PIML_QUEUE_URL": runner_env["PIML_QUEUE_URL"].replace("redis://:", "redis://:wrong")}, "--once"
    )
    assert bad.returncode == 1 and "Redis refused the password" in bad.stderr and "Traceback" not in bad.stderr
    unset = run_runner({k: v for k, v in runner_env.items() if k != "PIML_QUEUE_URL"}, "--once")
    assert unset.returncode == 2 and "PIML_QUEUE_URL: no broker given" in unset.stderr
