"""The queue runner: take one request, run the model on the dataset, log the predictions to MLflow, report.

In the cluster each KEDA Job runs `python -m piml.runner --once`; outside it, the same command debugs a
request against a broker and an MLflow server (PIML_QUEUE_URL, MLFLOW_TRACKING_URI and MLflow's usual
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD).

For each request: state running (node, runner, attempt) -> a new MLflow run in experiment `piml-jobs`
(params request_id, model, input and the request's params) -> load the model with mlflow.pyfunc ->
fetch and read the dataset in batches -> predict each batch -> write the predictions file and log it as the
run's artifact -> metrics rows and seconds -> state succeeded with the run id. A malformed request fails at
once; any other failure is retried up to `retries` more times, then the request is parked on the dead-letter
list with its error.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from piml.errors import first_line
from piml.queue.base import DEFAULT_RETRIES, FAILED, SUCCEEDED, Broker, Delivery, redact
from piml.queue.request import Request, RequestError, input_format, parse_message
from piml.runner.data import DataError, PredictionWriter, as_frame, fetch, read_batches

EXPERIMENT = "piml-jobs"
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "PIML_QUEUE_PASSWORD", "AWS_SECRET_ACCESS_KEY")


class StageError(Exception):
    """A request failed at one stage (model, input, predict, output); str() is the line users see."""


@dataclass
class Result:
    run_id: str
    run_url: str
    rows: int
    seconds: float
    experiment_id: str = ""


@dataclass
class Runner:
    broker: Broker
    runner_id: str = field(
        default_factory=lambda: (
            os.environ.get("PIML_RUNNER_ID") or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
    )
    node: str = field(default_factory=lambda: os.environ.get("PIML_NODE_NAME") or socket.gethostname())
    retries: int = field(default_factory=lambda: int(os.environ.get("PIML_RETRIES", DEFAULT_RETRIES)))
    # rows per batch; unset: by memory (piml.runner.data.rows_per_batch)
    batch_size: int | None = field(
        default_factory=lambda: int(os.environ["PIML_BATCH_SIZE"]) if os.environ.get("PIML_BATCH_SIZE") else None
    )
    log: Callable[[str], None] = field(default=lambda line: print(f"piml-runner: {line}", file=sys.stderr, flush=True))
    _models: dict = field(default_factory=dict)

    def take_and_run(self, wait: float) -> str | None:
        """Take one request (waiting up to `wait` seconds) and run it; its final state, or None if none came."""
        delivery = self.broker.take(self.runner_id, wait)
        if delivery is None:
            return None
        return self.handle(delivery)

    def handle(self, delivery: Delivery) -> str:
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(stop,), daemon=True)
        beat.start()
        try:
            return self._handle(delivery)
        finally:
            stop.set()
            beat.join(timeout=5)

    def _heartbeat(self, stop: threading.Event) -> None:
        interval = max(0.2, getattr(self.broker, "lease_seconds", 30) / 3)
        while not stop.wait(interval):
            try:
                self.broker.heartbeat(self.runner_id)
            except Exception as exc:  # noqa: BLE001 - a lost beat is not fatal; the next may pass
                self.log(f"heartbeat failed: {type(exc).__name__}")

    def _handle(self, delivery: Delivery) -> str:
        try:
            request = parse_message(delivery.raw)
        except RequestError as exc:
            error = f"malformed request: {exc}"
            self.log(f"rejected {delivery.id or 'a message without an id'}: {error}")
            self.broker.fail(delivery, scrub(error), retry=False, retries=self.retries)
            return FAILED
        if delivery.attempts > self.retries + 1:  # earlier runners died mid-request (OOM-killed?) every time
            error = f"gave up after {delivery.attempts - 1} attempts: the runner stopped during each (out of memory?)"
            self.broker.fail(delivery, error, retry=False, retries=self.retries)
            self.log(f"{request.id}: {error}; parked on the dead-letter list")
            return FAILED
        self.log(
            f"took {request.id} (attempt {delivery.attempts} of {self.retries + 1}): {request.model} on {redact(request.input)}"
        )
        self.broker.running(delivery, self.node)
        try:
            result = self.run(
                request, on_run=lambda run_id, url: self.broker.progress(delivery, run_id=run_id, run_url=url)
            )
        except Exception as exc:  # noqa: BLE001 - every failure is recorded on the request, never lost
            error = scrub(str(exc) if isinstance(exc, StageError) else f"{type(exc).__name__}: {first_line(exc)}")
            state = self.broker.fail(delivery, error, retry=True, retries=self.retries)
            self.log(
                f"{request.id} failed ({error}); "
                + ("queued again" if state != FAILED else "parked on the dead-letter list")
            )
            return state
        self.broker.succeed(
            delivery, run_id=result.run_id, run_url=result.run_url, rows=result.rows, seconds=round(result.seconds, 3)
        )
        self.log(f"{request.id} succeeded: {result.rows} rows in {result.seconds:.2f} s, MLflow run {result.run_id}")
        return SUCCEEDED

    # -- one request -----------------------------------------------------------------------------
    def run(self, request: Request, on_run: Callable[[str, str], None] | None = None) -> Result:
        import mlflow

        started = time.perf_counter()
        try:
            experiment = mlflow.set_experiment(EXPERIMENT)
        except Exception:  # noqa: BLE001 - another runner created it at the same moment
            experiment = mlflow.set_experiment(EXPERIMENT)
        params = {"request_id": request.id, "model": request.model, "input": request.input, "output": request.output}
        params.update({f"param.{k}": v for k, v in request.params.items()})
        with mlflow.start_run(
            experiment_id=experiment.experiment_id,
            run_name=request.id,
            tags={"piml.request_id": request.id, "piml.node": self.node},
        ) as run:
            run_id = run.info.run_id
            url = run_url(experiment.experiment_id, run_id)
            if on_run:
                on_run(run_id, url)
            mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})
            try:
                rows = self._predict(request)
            except StageError as exc:
                mlflow.set_tag("piml.error", scrub(str(exc))[:5000])
                raise
            seconds = time.perf_counter() - started
            mlflow.log_metrics({"rows": rows, "seconds": seconds})
        return Result(run_id, url, rows, seconds, experiment.experiment_id)

    def load_model(self, uri: str):
        import mlflow.pyfunc

        pinned = uri.startswith("runs:/") or (uri.startswith("models:/") and uri.rsplit("/", 1)[-1].isdigit())
        if pinned and uri in self._models:
            return self._models[uri]
        try:
            model = mlflow.pyfunc.load_model(uri)
        except Exception as exc:  # noqa: BLE001 - MlflowException (unknown model), flavour import errors...
            raise StageError(f"model: cannot load {uri}: {first_line(exc)}") from None
        if pinned:
            self._models[uri] = model
        return model

    def _predict(self, request: Request) -> int:
        import mlflow

        model = self.load_model(request.model)
        batch_size = request.batch_size or self.batch_size
        model_params = request.model_params or None
        with tempfile.TemporaryDirectory(prefix="piml-runner-") as tmp:
            tmp_path = Path(tmp)
            (tmp_path / "in").mkdir()
            try:
                local = fetch(request.input, tmp_path / "in")
            except DataError as exc:
                raise StageError(f"input: {exc}") from None
            out = tmp_path / "out" / request.output
            writer = PredictionWriter(out, input_format(request.output))
            rows = 0
            batches = read_batches(local, request.format, batch_size)
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except DataError as exc:
                    raise StageError(f"input: {exc}") from None
                try:
                    predictions = model.predict(batch, params=model_params) if model_params else model.predict(batch)
                except Exception as exc:  # noqa: BLE001 - whatever the model raises
                    raise StageError(
                        f"predict: rows {rows}-{rows + len(batch) - 1}: {type(exc).__name__}: {first_line(exc)}"
                    ) from None
                frame = as_frame(predictions, rows)
                if len(frame) != len(batch):
                    raise StageError(f"predict: the model returned {len(frame)} predictions for {len(batch)} rows")
                writer.write(frame)
                rows += len(batch)
            writer.close()
            artifact_dir = str(Path(request.output).parent) if "/" in request.output else None
            try:
                mlflow.log_artifact(str(out), artifact_path=artifact_dir)
            except Exception as exc:  # noqa: BLE001
                raise StageError(f"output: cannot log {request.output} to MLflow: {first_line(exc)}") from None
        return rows


def run_url(experiment_id: str, run_id: str) -> str:
    """Where a person sees the run: $PIML_MLFLOW_UI_URL (the ingress) or the tracking URI, without credentials."""
    import mlflow

    base = os.environ.get("PIML_MLFLOW_UI_URL") or mlflow.get_tracking_uri()
    if not base.startswith(("http://", "https://")):
        return f"runs:/{run_id}"
    parts = urlsplit(base)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def scrub(text: str) -> str:
    """Text fit to record or print: no secret from the environment in it."""
    for name in SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    url = os.environ.get("PIML_QUEUE_URL")
    if url:
        password = urlsplit(url).password
        if password and len(password) >= 4:
            text = text.replace(password, "***")
    return text


def serve(
    broker: Broker,
    *,
    once: bool = False,
    drain: bool = False,
    wait: float = 60.0,
    runner: Runner | None = None,
    **options: Any,
) -> int:
    """Take requests: one (--once), until none comes within `wait` s (--drain), or until stopped. How many ran."""
    runner = runner or Runner(broker, **options)
    done = 0
    try:
        while True:
            state = runner.take_and_run(wait)
            if state is None:
                if once or drain:
                    runner.log(f"no request within {wait:g} s")
                    break
                continue
            done += 1
            if once:
                break
    finally:
        try:
            broker.release(runner.runner_id)
        except Exception:  # noqa: BLE001 - leaving anyway; the lease expires by itself
            pass
    return done
