"""deep_checks against real services: a Ray job (through the dashboard's Jobs API) trains and registers a model
in MLflow, a Dask computation, a queued request that a real runner process predicts."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from dataclasses import replace

import pandas as pd
import pytest

from piml.config import PimlConfig
from piml.health.deep import Deadline, deep_checks, queued_request
from tests.health.helpers import assert_rows_clean, local_dask_python, rows_text
from tests.queue.helpers import assert_no_secrets, start_runner


def config(**settings) -> PimlConfig:
    return PimlConfig.model_validate(settings)


@pytest.fixture
def runner(runner_env, clean_redis, tmp_path):
    """Start a real runner (`python -m piml.runner --once`), as KEDA would for the request; always stopped."""
    started = []

    def start(mode: str = "--once", wait: float = 240, **env) -> tuple:
        log = tmp_path / f"runner-{len(started)}.log"
        proc = start_runner({**runner_env, **env}, mode, "--wait", str(wait), log=log)
        started.append(proc)
        return proc, log

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def ray_jobs(ray_head) -> list[dict]:
    request = urllib.request.Request(
        f"{ray_head.dashboard_url}/api/jobs/", headers={"Authorization": f"Bearer {ray_head.token}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.load(response)


def test_deep_checks_pass_and_the_predictions_land(endpoints, runner, ray_head, redis_server, tmp_path):
    import mlflow
    from sklearn.datasets import load_iris

    proc, log = runner(PIML_NODE_NAME="pi-node-3")
    started = time.monotonic()
    rows = deep_checks(endpoints, PimlConfig(), timeout=300)
    took = time.monotonic() - started
    assert [(r.group, r.target, r.status) for r in rows] == [
        ("deep", "ray", "pass"),
        ("deep", "dask", "pass"),
        ("deep", "queue", "pass"),
    ], rows_text(rows)
    got = {r.target: r for r in rows}
    assert "registered piml-check version " in got["ray"].detail and "accuracy 0.9" in got["ray"].detail
    assert got["dask"].detail == "200 tasks ran on 1 of 1 worker; the sum of squares is 2646700, as expected"
    assert (
        " ran on node pi-node-3 in " in got["queue"].detail
        and ": 150 rows predicted with models:/piml-check/" in got["queue"].detail
    )
    assert "predictions.csv logged (" in got["queue"].detail

    # the model is registered, its training data logged; the request's predictions are the model's
    version = got["ray"].detail.split("registered piml-check version ")[1].split()[0]
    client = mlflow.MlflowClient()
    registered = client.get_model_version("piml-check", version)
    data = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=registered.run_id, artifact_path="data/iris.csv", dst_path=str(tmp_path / "in")
        )
    )
    assert len(data) == 150 and list(data.columns) == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    run_id = got["queue"].detail.rsplit("MLflow run ", 1)[1]
    predictions = pd.read_csv(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="predictions.csv", dst_path=str(tmp_path / "out")
        )
    )
    assert (
        len(predictions) == 150 and (predictions["prediction"] == load_iris().target).mean() > 0.9
    )  # the trained model's
    assert mlflow.get_run(run_id).data.params["model"] == f"models:/piml-check/{version}"

    assert proc.wait(timeout=30) == 0  # --once: it ran the check's request and left
    assert_rows_clean(rows)
    assert_no_secrets(log.read_text())
    assert_no_secrets(json.dumps(ray_jobs(ray_head)))  # what the Ray dashboard shows of the submissions
    print(f"deep checks: {took:.1f} s\n" + rows_text(rows))


def test_a_failing_ray_job_reports_its_log_tail_and_the_queue_step_says_why_it_did_not_run(
    endpoints, mlflow_server, runner
):
    """The job's MLflow address is wrong (MLflow answers 404 under it): the job fails; the row has its log tail."""
    broken = replace(endpoints, mlflow_url_inside=f"{mlflow_server.url}/no-such-prefix")
    rows = deep_checks(broken, config(dask={"enabled": False}), timeout=180)
    got = {r.target: r for r in rows}
    assert list(got) == ["ray", "queue"]
    ray = got["ray"]
    assert ray.status == "fail", rows_text(rows)
    assert (
        ray.detail.startswith("Ray job piml-check-")
        and " FAILED (Job entrypoint command failed with exit code 1): " in ray.detail
    )
    error, tail = ray.detail.split(" FAILED (Job entrypoint command failed with exit code 1): ", 1)[1].split(
        "; log tail: ", 1
    )
    assert error.startswith("mlflow.exceptions.MlflowException: ") and "404" in error, ray.detail
    assert "404 Not Found" in tail and "Traceback" not in ray.detail.split("; log tail: ")[0]
    job_id = ray.detail.split()[2]
    assert f"/#/jobs/{job_id}" in ray.fix and "kubectl -n piml port-forward svc/ray-head-svc 8265" in ray.fix
    queue = got["queue"]
    assert queue.status == "skip" and queue.detail.startswith(
        "not run: the Ray step registered no model to queue a request for (fail: Ray job "
    )
    assert_rows_clean(rows)


def test_a_ray_job_past_the_timeout_is_stopped_and_reported(endpoints, ray_head):
    rows = deep_checks(endpoints, config(dask={"enabled": False}, queue={"enabled": False}), timeout=3)
    assert [(r.target, r.status) for r in rows] == [("ray", "fail")]
    detail = rows[0].detail
    assert detail.startswith("Ray job piml-check-") and " after 3 s (stopped it)" in detail and " still " in detail, (
        detail
    )
    job_id = detail.split()[2]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = next(job for job in ray_jobs(ray_head) if job["submission_id"] == job_id)["status"]
        if status != "RUNNING" and status != "PENDING":
            break
        time.sleep(0.5)
    assert status == "STOPPED"


def test_dask_without_workers_fails_the_deep_dask_row(endpoints, idle_dask):
    rows = deep_checks(
        replace(endpoints, dask_python=local_dask_python(idle_dask.address)),
        config(ray={"enabled": False}, queue={"enabled": False}),
        timeout=60,
    )
    assert [(r.target, r.status) for r in rows] == [("dask", "fail")]
    assert rows[0].detail == "the scheduler has no workers"
    assert "kubectl -n piml get pods -l app.kubernetes.io/name=dask-worker" in rows[0].fix


def test_dask_script_output_is_verified(endpoints):
    """A script beside the scheduler that answers wrongly (or nothing) fails the row."""
    cfg = config(ray={"enabled": False}, queue={"enabled": False})
    wrong = json.dumps({"n": 200, "sum": 1, "ran_on": ["tcp://w:1"], "workers": ["tcp://w:1"], "on_client": 0})
    rows = deep_checks(replace(endpoints, dask_python=lambda script: wrong + "\n"), cfg, timeout=30)
    assert rows[0].status == "fail" and rows[0].detail.startswith(
        "wrong result: 200 tasks summing to 1, expected 200 summing to 2646700"
    )
    local = json.dumps({"n": 200, "sum": 2646700, "ran_on": ["tcp://w:1"], "workers": ["tcp://w:1"], "on_client": 200})
    rows = deep_checks(replace(endpoints, dask_python=lambda script: local), cfg, timeout=30)
    assert rows[0].status == "fail" and "did not run on the scheduler's workers" in rows[0].detail
    rows = deep_checks(replace(endpoints, dask_python=lambda script: "Traceback ...\n"), cfg, timeout=30)
    assert rows[0].status == "fail" and rows[0].detail == "the Dask script printed no result: Traceback ..."


def test_queue_step_without_a_runner_times_out_and_a_failed_request_shows_its_error(endpoints, runner):
    """Bounded when no runner comes (KEDA down); a request the runner fails is reported with the runner's error."""
    cfg = PimlConfig()
    trained = {"model": "no-such-model", "version": "1", "run_id": "0" * 32, "dataset": "data/iris.csv", "rows": 150}
    from piml.health.result import timed

    started = time.monotonic()
    row = timed("deep", "queue", "request", lambda: queued_request(endpoints, cfg, trained, None, Deadline(2)))
    assert time.monotonic() - started < 6
    assert (
        row.status == "fail"
        and row.detail.startswith("request ")
        and row.detail.endswith("still queued after 2 s: no runner took it")
    )
    assert "kubectl -n piml get scaledjob piml-runner" in row.fix

    # that request is still queued: a runner takes both it and the next, and fails them (no such model),
    # without retries
    _, log = runner("--drain", wait=5, PIML_RETRIES="0", PIML_NODE_NAME="pi-node-2")
    row = timed("deep", "queue", "request", lambda: queued_request(endpoints, cfg, trained, None, Deadline(60)))
    assert row.status == "fail", row
    assert (
        row.detail.startswith("request ")
        and " failed on node pi-node-2 after 1 attempt(s): model: cannot load models:/no-such-model/1: " in row.detail
    )
    assert_rows_clean([row])
    assert_no_secrets(log.read_text())


def test_the_job_submission_carries_no_credentials():
    from piml.health.deep import JOB_SCRIPT, job_submission
    from piml.health.endpoints import Endpoints

    endpoints = Endpoints(
        mlflow_url="http://127.0.0.1:1",
        mlflow_user="admin",
        mlflow_password="pw-secret-1",
        mlflow_url_inside="http://admin:pw-secret-1@mlflow.piml.svc:5000/mlflow",
    )
    body = job_submission(endpoints, "piml-check-1", ["mlflow==3.18.0", "scikit-learn"])
    assert body["runtime_env"] == {
        "pip": ["mlflow==3.18.0", "scikit-learn"],
        "env_vars": {"MLFLOW_TRACKING_URI": "http://mlflow.piml.svc:5000/mlflow"},
    }
    assert body["submission_id"] == "piml-check-1" and body["entrypoint"].startswith("python -c ")
    assert (
        body["entrypoint"].endswith(" piml-check piml-check") and "ray.remote(num_cpus=1)(train)" in body["entrypoint"]
    )
    assert "pw-secret-1" not in json.dumps(body)
    assert "PASSWORD" not in JOB_SCRIPT.read_text().replace("MLFLOW_TRACKING_PASSWORD", "")
    assert job_submission(Endpoints(), "x")["runtime_env"] == {}


def test_disabled_or_unreachable_components_in_deep_checks():
    from piml.health.endpoints import Endpoints

    rows = deep_checks(Endpoints(), config(ray={"enabled": False}, dask={"enabled": False}), timeout=5)
    assert [(r.target, r.status) for r in rows] == [("queue", "skip")]
    assert (
        rows[0].detail
        == "not run: it predicts with the model the Ray step registers, and Ray or MLflow is disabled in piml.yaml"
    )
    rows = deep_checks(
        Endpoints(), config(mlflow={"enabled": False}, queue={"enabled": False}, dask={"enabled": False}), timeout=5
    )
    assert [(r.target, r.status) for r in rows] == [("ray", "skip")]
    rows = deep_checks(
        Endpoints(unreachable={"ray": "no ray head pod is running", "dask": "no dask-scheduler pod"}),
        PimlConfig(),
        timeout=5,
    )
    assert [(r.target, r.status) for r in rows] == [("ray", "fail"), ("dask", "fail"), ("queue", "skip")]
    assert rows[0].detail == "could not be reached: no ray head pod is running"
    assert rows[1].detail == "could not be reached: no dask-scheduler pod"
    assert rows[2].detail.startswith(
        "not run: the Ray step registered no model to queue a request for (fail: could not be reached"
    )
