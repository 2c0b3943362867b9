"""`piml check --deep`: the platform does real work, end to end. One row (group "deep") per step:

1. ray    a Ray job, submitted through the Jobs REST API of the dashboard (POST {ray}/api/jobs/, polled at
          GET {ray}/api/jobs/ID, logs at GET {ray}/api/jobs/ID/logs; no Ray client library here), trains a
          scikit-learn model on iris in a Ray task, logs the training data as a CSV artifact, registers the
          model in MLflow as `piml-check` (deep_ray_job.py is its script) and prints its run id and version;
          the check then reads the version back from MLflow (GET {mlflow}/api/2.0/mlflow/model-versions/get).
2. dask   a script beside the scheduler (endpoints.dask_python) maps a function over a range on the workers
          and prints what ran where; the check verifies the sum and that workers, not the client, ran it.
3. queue  a request (models:/piml-check/VERSION on the job's CSV artifact) goes to the broker; a runner (a
          KEDA Job in the cluster) runs it; the check waits for `succeeded`, the rows and the run's
          predictions artifact.
4. serve  the serving cluster's own route `piml-check` (piml.serve.apps.CHECK_ROUTE: the newest version of that
          model, no replica until asked) reloads to the job's version, then answers the job's rows at
          POST /serve/piml-check/predict; the check compares them with the job's own model.predict, exactly.

The Ray and Dask steps run at the same time; the queue and serve steps need the Ray step's model, and run at the
same time. `timeout` bounds
the whole (a first Ray job on a Pi may install packages and start a worker pod: minutes).
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from piml.config import PimlConfig
from piml.health import probes
from piml.health.endpoints import Endpoints
from piml.health.probes import (
    Unreachable,
    http_json,
    join,
    open_broker,
    queue_fix,
    scrub,
    secrets_of,
    show_url,
    snippet,
)
from piml.health.result import CheckFailed, CheckSkipped, Result, timed

GROUP = "deep"
MODEL_NAME = "piml-check"
EXPERIMENT = "piml-check"
MARK = "PIML_CHECK_RESULT "
JOB_SCRIPT = Path(__file__).with_name("deep_ray_job.py")
SUBMIT_TIMEOUT = 30.0  # the dashboard starts the job's supervisor before it answers
POLL = 1.0
TAIL_LINES, TAIL_CHARS = 8, 700
DASK_TASKS = 200
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class Deadline:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.monotonic(), seconds
        self.end = self.start + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def deep_checks(
    endpoints: Endpoints, config: PimlConfig, *, ray_pip: list[str] | None = None, timeout: float = 600
) -> list[Result]:
    """The deep rows: ray, dask, queue, for the enabled components; the whole ends within about `timeout` s."""
    deadline = Deadline(timeout)
    trained: dict[str, Any] = {}
    rows: dict[str, Result] = {}

    def ray_step() -> None:
        rows["ray"] = timed(
            GROUP,
            "ray",
            "train and register",
            lambda: train_and_register(endpoints, config, ray_pip, deadline, trained),
        )

    dask_thread = None
    if config.dask.enabled:

        def dask_step() -> None:
            rows["dask"] = timed(GROUP, "dask", "computation", lambda: compute(endpoints, config, deadline))

        dask_thread = threading.Thread(target=dask_step, name="piml-deep-dask", daemon=True)
        dask_thread.start()
    if config.ray.enabled:
        ray_step()
    if dask_thread is not None:
        dask_thread.join()
    serve_thread = None
    if config.serve.enabled:

        def serve_step() -> None:
            rows["serve"] = timed(
                GROUP,
                "serve",
                "predict",
                lambda: served_predictions(endpoints, config, trained, rows.get("ray"), deadline),
            )

        serve_thread = threading.Thread(target=serve_step, name="piml-deep-serve", daemon=True)
        serve_thread.start()
    if config.queue.enabled:
        rows["queue"] = timed(
            GROUP, "queue", "request", lambda: queued_request(endpoints, config, trained, rows.get("ray"), deadline)
        )
    if serve_thread is not None:
        serve_thread.join()
    ordered = [rows[name] for name in ("ray", "dask", "queue", "serve") if name in rows]
    return scrub(ordered, secrets_of(endpoints))


# -- 1. a Ray job trains and registers a model --------------------------------------------------------------
def entrypoint(model_name: str = MODEL_NAME, experiment: str = EXPERIMENT) -> str:
    """The job's shell command: the script's source inline (no upload, no client library needed here)."""
    return f"python -c {shlex.quote(JOB_SCRIPT.read_text())} {shlex.quote(model_name)} {shlex.quote(experiment)}"


def job_submission(endpoints: Endpoints, job_id: str, ray_pip: list[str] | None = None) -> dict[str, Any]:
    """The body of POST /api/jobs/. No credentials: Ray shows submissions on its dashboard."""
    runtime_env: dict[str, Any] = {}
    if ray_pip:
        runtime_env["pip"] = list(ray_pip)
    if endpoints.mlflow_url_inside:  # the address only: the credentials are the pods' own
        runtime_env["env_vars"] = {"MLFLOW_TRACKING_URI": show_url(endpoints.mlflow_url_inside)}
    return {
        "entrypoint": entrypoint(),
        "submission_id": job_id,
        "runtime_env": runtime_env,
        "metadata": {"piml": "check --deep"},
    }


def ray_fix(endpoints: Endpoints, config: PimlConfig, job_id: str | None = None) -> str:
    page = (
        f"{show_url(endpoints.ray_dashboard_url or '')}/#/jobs/{job_id}"
        if job_id
        else show_url(endpoints.ray_dashboard_url or "")
    )
    ns = config.namespace
    return (
        f"the Ray dashboard shows the job and its log: {page} (while piml runs; else kubectl -n {ns} port-forward "
        f"svc/ray-head-svc 8265); the head's log: kubectl -n {ns} logs -l ray.io/node-type=head --tail=50"
    )


def log_tail(text: str, lines: int = TAIL_LINES, chars: int = TAIL_CHARS) -> str:
    kept = [line.rstrip() for line in _ANSI.sub("", text or "").splitlines() if line.strip()][-lines:]
    tail = " | ".join(kept)
    return tail if len(tail) <= chars else "..." + tail[-(chars - 3) :]


_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit)\b(?::.*)?$")


def last_error(text: str, chars: int = 300) -> str:
    """The last `SomeError: what` line of a log (a traceback's summary), short."""
    found = [line.strip() for line in _ANSI.sub("", text or "").splitlines() if _ERROR_LINE.match(line.strip())]
    return snippet(found[-1], chars) if found else ""


def _job_logs(base: str, job_id: str, token: str | None) -> str:
    try:
        status, answer = http_json("GET", join(base, f"api/jobs/{quote(job_id)}/logs"), bearer=token)
    except Unreachable:
        return ""
    return str(answer.get("logs") or "") if status == 200 and isinstance(answer, dict) else ""


def train_and_register(
    endpoints: Endpoints, config: PimlConfig, ray_pip: list[str] | None, deadline: Deadline, trained: dict[str, Any]
) -> str:
    base = endpoints.ray_dashboard_url
    if not config.mlflow.enabled:
        raise CheckSkipped("not run: the Ray job registers its model in MLflow, which is disabled in piml.yaml")
    if not base:
        why = (getattr(endpoints, "unreachable", None) or {}).get("ray") or "no address for the Ray head's dashboard"
        raise CheckFailed(f"could not be reached: {why}", ray_fix(endpoints, config))
    if not endpoints.mlflow_url:
        why = (getattr(endpoints, "unreachable", None) or {}).get("mlflow") or "no address for the MLflow server"
        raise CheckFailed(
            f"MLflow could not be reached to read the model back: {why}",
            f"kubectl -n {config.namespace} get pods -l app.kubernetes.io/name=mlflow",
        )
    job_id = f"piml-check-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"
    submission = job_submission(endpoints, job_id, ray_pip)
    try:
        status, answer = http_json(
            "POST",
            join(base, "api/jobs/"),
            body=submission,
            timeout=min(SUBMIT_TIMEOUT, max(1.0, deadline.left())),
            bearer=endpoints.ray_token,
        )
    except Unreachable as exc:
        raise CheckFailed(
            f"the Ray dashboard does not take jobs at {show_url(base)} ({exc})", ray_fix(endpoints, config)
        ) from None
    if status != 200:
        raise CheckFailed(
            f"the Ray dashboard refused the job (HTTP {status}): {snippet(answer and json.dumps(answer))}",
            ray_fix(endpoints, config),
        )

    state, message, misses = "PENDING", "", 0
    while True:
        try:
            status, info = http_json(
                "GET",
                join(base, f"api/jobs/{quote(job_id)}"),
                timeout=min(probes.HTTP_TIMEOUT, max(1.0, deadline.left())),
                bearer=endpoints.ray_token,
            )
            misses = 0 if status == 200 else misses + 1
            if status == 200 and isinstance(info, dict):
                state, message = str(info.get("status") or state), str(info.get("message") or "")
        except Unreachable:
            misses += 1
        if state in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        if misses >= 5:
            raise CheckFailed(
                f"lost the Ray dashboard while job {job_id} was {state}", ray_fix(endpoints, config, job_id)
            )
        if deadline.left() <= 0:
            tail = log_tail(_job_logs(base, job_id, endpoints.ray_token))
            try:
                http_json("POST", join(base, f"api/jobs/{quote(job_id)}/stop"), bearer=endpoints.ray_token)
            except Unreachable:
                pass
            raise CheckFailed(
                f"Ray job {job_id} still {state} after {deadline.elapsed():.0f} s (stopped it)"
                + (f"; log tail: {tail}" if tail else ""),
                ray_fix(endpoints, config, job_id),
            )
        time.sleep(min(POLL, max(0.0, deadline.left())))

    logs = _job_logs(base, job_id, endpoints.ray_token)
    if state != "SUCCEEDED":
        said = snippet(message.split(", last available logs")[0], 200)  # Ray appends the log to its message
        error = last_error(logs)
        tail = log_tail(logs)
        raise CheckFailed(
            f"Ray job {job_id} {state}"
            + (f" ({said})" if said else "")
            + (f": {error}" if error else "")
            + (f"; log tail: {tail}" if tail else "; no log"),
            ray_fix(endpoints, config, job_id),
        )
    found = [line[line.index(MARK) + len(MARK) :] for line in logs.splitlines() if MARK in line]
    try:
        result = json.loads(found[-1])
        run_id, version = str(result["run_id"]), str(result["version"])
    except (IndexError, ValueError, KeyError, TypeError):
        raise CheckFailed(
            f"Ray job {job_id} succeeded but printed no result line; log tail: {log_tail(logs)}",
            ray_fix(endpoints, config, job_id),
        ) from None

    model = read_back(endpoints, config, result)
    trained.update(result, job_id=job_id)
    return (
        f"Ray job {job_id} trained a LogisticRegression on {result.get('node', '?')} (accuracy {float(result.get('accuracy', 0)):.2f}) "
        f"and registered {MODEL_NAME} version {version} ({model.get('status', '?')}), MLflow run {run_id}"
    )


def mlflow_auth(endpoints: Endpoints) -> tuple[str, str] | None:
    if endpoints.mlflow_user and endpoints.mlflow_password:
        return endpoints.mlflow_user, endpoints.mlflow_password
    return None


def read_back(endpoints: Endpoints, config: PimlConfig, result: dict) -> dict:
    """The registered version, as MLflow has it (through the MLflow URL, with auth); its run is the job's."""
    url = endpoints.mlflow_url or ""
    fix = f"the MLflow UI's Models page; kubectl -n {config.namespace} logs deploy/mlflow --tail=50"
    query = f"api/2.0/mlflow/model-versions/get?name={quote(str(result['model']), safe='')}&version={quote(str(result['version']), safe='')}"
    try:
        status, answer = http_json("GET", join(url, query), auth=mlflow_auth(endpoints))
    except Unreachable as exc:
        raise CheckFailed(f"MLflow does not answer at {show_url(url)} to read the model back ({exc})", fix) from None
    if status != 200 or not isinstance(answer, dict) or "model_version" not in answer:
        raise CheckFailed(
            f"the Ray job registered {result['model']} version {result['version']}, but MLflow answers HTTP {status}: "
            f"{snippet(answer and json.dumps(answer))}",
            fix,
        )
    model = answer["model_version"]
    if model.get("run_id") != result["run_id"]:
        raise CheckFailed(
            f"{result['model']} version {result['version']} belongs to run {model.get('run_id')}, not the job's "
            f"{result['run_id']}: is another MLflow answering?",
            fix,
        )
    if model.get("status") not in (None, "READY"):
        raise CheckFailed(f"{result['model']} version {result['version']} is {model.get('status')}, not READY", fix)
    return model


# -- 2. a Dask computation on the workers ---------------------------------------------------------------------
DASK_SCRIPT = """
import json, os, sys

from distributed import Client, wait

N, TIMEOUT = {tasks}, {timeout}


def probe(x):
    import os

    from distributed import get_worker  # raises unless it runs on a worker

    return x * x, get_worker().address, os.getpid()


def say(**result):
    print(json.dumps(result), flush=True)


address = os.environ.get("DASK_SCHEDULER_ADDRESS") or "tcp://127.0.0.1:8786"
try:
    client = Client(address, timeout=f"{{min(20, TIMEOUT)}}s")
except Exception as exc:
    say(error=f"no client connects to the scheduler at {{address}}: {{type(exc).__name__}}: {{str(exc)[:200]}}")
    sys.exit(0)
with client:
    workers = sorted(client.nthreads())
    if not workers:
        say(error="the scheduler has no workers", workers=[])
        sys.exit(0)
    futures = client.map(probe, range(N), pure=False)
    try:
        wait(futures, timeout=TIMEOUT)
        results = client.gather(futures)
    except Exception as exc:
        say(error=f"the tasks did not finish within {{TIMEOUT}} s on {{len(workers)}} workers: {{type(exc).__name__}}: {{str(exc)[:200]}}",
            workers=workers)
        sys.exit(0)
    say(n=len(results), sum=sum(r[0] for r in results), ran_on=sorted({{r[1] for r in results}}), workers=workers,
        on_client=sum(1 for r in results if r[2] == os.getpid()))
"""


def dask_script(tasks: int = DASK_TASKS, timeout: float = 120) -> str:
    return DASK_SCRIPT.format(tasks=int(tasks), timeout=max(5, int(timeout))).lstrip()


def compute(endpoints: Endpoints, config: PimlConfig, deadline: Deadline) -> str:
    ns = config.namespace
    fix = (
        f"kubectl -n {ns} logs deploy/dask-scheduler --tail=50; kubectl -n {ns} get pods -l app.kubernetes.io/name=dask-worker -o wide; "
        f"kubectl -n {ns} logs -l app.kubernetes.io/name=dask-worker --tail=50"
    )
    if endpoints.dask_python is None:
        why = (getattr(endpoints, "unreachable", None) or {}).get(
            "dask"
        ) or "no way to run Python beside the Dask scheduler"
        raise CheckFailed(f"could not be reached: {why}", fix)
    output = endpoints.dask_python(dask_script(timeout=min(120, max(5, deadline.left() - 10))))
    lines = [line for line in (output or "").splitlines() if line.strip().startswith("{")]
    try:
        result = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise CheckFailed(f"the Dask script printed no result: {snippet(output) or 'nothing'}", fix) from None
    if result.get("error"):
        raise CheckFailed(str(result["error"]), fix)
    expected = sum(x * x for x in range(DASK_TASKS))
    workers, ran_on = set(result.get("workers") or []), set(result.get("ran_on") or [])
    if result.get("n") != DASK_TASKS or result.get("sum") != expected:
        raise CheckFailed(
            f"wrong result: {result.get('n')} tasks summing to {result.get('sum')}, expected {DASK_TASKS} summing to {expected}",
            fix,
        )
    if not ran_on or not ran_on <= workers or result.get("on_client"):
        raise CheckFailed(
            f"the tasks did not run on the scheduler's workers (ran on {sorted(ran_on)}, workers {sorted(workers)})",
            fix,
        )
    return (
        f"{DASK_TASKS} tasks ran on {len(ran_on)} of {len(workers)} worker{'s' * (len(workers) != 1)}; "
        f"the sum of squares is {expected}, as expected"
    )


# -- 3. a request through the queue --------------------------------------------------------------------------
def queued_request(
    endpoints: Endpoints, config: PimlConfig, trained: dict[str, Any], ray_row: Result | None, deadline: Deadline
) -> str:
    from piml.queue import SUCCEEDED, TERMINAL, make_request

    if not trained:
        if not config.ray.enabled or not config.mlflow.enabled:
            raise CheckSkipped(
                "not run: it predicts with the model the Ray step registers, and Ray or MLflow is disabled in piml.yaml"
            )
        why = f" ({ray_row.status}: {snippet(ray_row.detail, 120)})" if ray_row is not None else ""
        raise CheckSkipped(f"not run: the Ray step registered no model to queue a request for{why}")
    if not endpoints.queue_url:
        why = (getattr(endpoints, "unreachable", None) or {}).get(
            "queue"
        ) or f"no address for the {config.queue.kind} broker"
        raise CheckFailed(f"could not be reached: {why}", queue_fix(config))
    ns = config.namespace
    runner_fix = (
        f"KEDA starts a runner Job per request: kubectl -n {ns} get scaledjob piml-runner; kubectl -n {ns} get jobs,pods "
        f"-l app.kubernetes.io/name=piml-runner; kubectl -n keda logs deploy/keda-operator --tail=50"
    )
    request = make_request(
        f"models:/{trained['model']}/{trained['version']}", f"runs:/{trained['run_id']}/{trained['dataset']}"
    )
    broker = open_broker(endpoints, config)
    try:
        broker.submit(request)
        job: dict | None = None
        while True:
            job = broker.get(request.id) or {}
            if job.get("state") in TERMINAL or deadline.left() <= 0:
                break
            time.sleep(min(POLL, max(0.0, deadline.left())))
    finally:
        broker.close()
    state = job.get("state") or "unknown"
    where = f" on node {job['node']}" if job.get("node") else ""
    if state not in TERMINAL:
        waiting = "no runner took it" if state == "queued" else f"a runner{where} is still at it"
        raise CheckFailed(f"request {request.id} still {state} after {deadline.elapsed():.0f} s: {waiting}", runner_fix)
    if state != SUCCEEDED:
        raise CheckFailed(
            f"request {request.id} failed{where} after {job.get('attempts')} attempt(s): {snippet(job.get('error'), 300)}",
            f"piml jobs --queue-url ... shows it; the runner's MLflow run: {job.get('run_url') or 'none'}; {runner_fix}",
        )
    if job.get("rows") != trained.get("rows"):
        raise CheckFailed(
            f"request {request.id} predicted {job.get('rows')} rows, the dataset has {trained.get('rows')}", runner_fix
        )
    if not job.get("run_id"):
        raise CheckFailed(f"request {request.id} succeeded without an MLflow run id", runner_fix)
    output = _find_artifact(endpoints, job["run_id"], request.output)
    seconds = f" in {job['seconds']:.1f} s" if isinstance(job.get("seconds"), (int, float)) else ""
    return (
        f"request {request.id} ran{where}{seconds}: {job['rows']} rows predicted with {request.model}, "
        f"{request.output} {output} in MLflow run {job['run_id']}"
    )


# -- 4. the registered model served online -----------------------------------------------------------------
def served_predictions(
    endpoints: Endpoints, config: PimlConfig, trained: dict[str, Any], ray_row: Result | None, deadline: Deadline
) -> str:
    from piml.serve.apps import CHECK_ROUTE, route_url

    ns = config.namespace
    fix = (
        f"kubectl -n {ns} get rayservice piml-serve -o wide; "
        f"kubectl -n {ns} get pods -l ray.io/is-ray-node=yes -o wide; "
        f"kubectl -n {ns} logs -l piml.io/component=serve-head -c ray-head --tail=50 (the replicas' logs are under "
        "/tmp/ray/session_latest/logs/serve/ in the serving pods)"
    )
    if not trained:
        why = f" ({ray_row.status}: {snippet(ray_row.detail, 120)})" if ray_row is not None else ""
        raise CheckSkipped(f"not run: the Ray step registered no model to serve{why}")
    if not endpoints.serve_url:
        why = (getattr(endpoints, "unreachable", None) or {}).get("serve") or "no address for the serving head"
        raise CheckFailed(f"could not be reached: {why}", fix)
    route = join(endpoints.serve_url, route_url(CHECK_ROUTE))
    version = str(trained["version"])

    def ask(method: str, path: str, body: Any = None) -> dict:
        # the first request starts the route's replica (and may start a pod for it): up to the whole budget
        wait = max(1.0, deadline.left())
        try:
            status, answer = http_json(method, route + path, body=body, timeout=wait, bearer=endpoints.serve_token)
        except Unreachable as exc:
            raise CheckFailed(f"{method} {route_url(CHECK_ROUTE)}{path} had no answer ({exc})", fix) from None
        if status != 200 or not isinstance(answer, dict):
            said = snippet((answer.get("error") if isinstance(answer, dict) else None) or json.dumps(answer))
            raise CheckFailed(f"{method} {route_url(CHECK_ROUTE)}{path} answered HTTP {status}: {said}", fix)
        return answer

    started = time.monotonic()
    reloaded = ask("POST", "/reload")  # the newest version, which is the job's unless another check ran since
    if str(reloaded.get("version")) != version:
        raise CheckFailed(
            f"route {CHECK_ROUTE} loaded {MODEL_NAME} version {reloaded.get('version')}, not the job's {version}: did "
            "another check register one since?",
            fix,
        )
    ready = time.monotonic() - started
    body = {"dataframe_split": {"columns": trained["columns"], "data": trained["data"]}}
    answer = ask("POST", "/predict", body)
    served, expected = list(answer.get("predictions") or []), trained["predictions"]
    if str(answer.get("version")) != version:
        raise CheckFailed(f"route {CHECK_ROUTE} answered with version {answer.get('version')}, not {version}", fix)
    if served != expected:
        wrong = next((i for i, (a, b) in enumerate(zip(served, expected, strict=False)) if a != b), None)
        where = (
            f"row {wrong}: {served[wrong]!r}, model.predict {expected[wrong]!r}"
            if wrong is not None
            else f"{len(served)} predictions for {len(expected)} rows"
        )
        raise CheckFailed(f"route {CHECK_ROUTE} differs from the model's own answer at {where}", fix)
    return (
        f"route {CHECK_ROUTE} served {MODEL_NAME} version {version} (ready in {ready:.0f} s): its {len(expected)} "
        "predictions equal model.predict's on the same rows"
    )


def _find_artifact(endpoints: Endpoints, run_id: str, name: str) -> str:
    """'logged' once MLflow lists the run's predictions file; CheckFailed when it does not."""
    url = endpoints.mlflow_url
    if not url:
        return "(not verified: no MLflow address)"
    try:
        status, answer = http_json(
            "GET", join(url, f"api/2.0/mlflow/artifacts/list?run_id={quote(run_id)}"), auth=mlflow_auth(endpoints)
        )
    except Unreachable as exc:
        raise CheckFailed(
            f"MLflow does not answer at {show_url(url)} to list the run's artifacts ({exc})", ""
        ) from None
    files = (
        {f.get("path"): f for f in (answer or {}).get("files", [])}
        if status == 200 and isinstance(answer, dict)
        else {}
    )
    found = files.get(name)
    if not found or found.get("is_dir") or not int(found.get("file_size") or 0):
        raise CheckFailed(
            f"the runner's MLflow run {run_id} has no {name} (artifacts: {sorted(p for p in files if p) or 'none'}; HTTP {status})",
            "the runner logs its predictions to MLflow's artifact store: check the store and the runner's log",
        )
    return f"logged ({int(found['file_size'])} bytes)"


__all__ = [
    "EXPERIMENT",
    "MODEL_NAME",
    "dask_script",
    "deep_checks",
    "entrypoint",
    "job_submission",
    "last_error",
    "log_tail",
]
