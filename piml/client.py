"""Queue requests from Python, inside the cluster (a notebook, a Ray task) or anywhere a broker is reachable.

    from piml.client import submit, wait
    request_id = submit("models:/iris@champion", "datasets/iris.csv", params={"batch_size": 5000})
    job = wait(request_id, timeout=600)   # {"id", "state", "run_id", "run_url", "error", ...}

The broker comes from `queue_url` or $PIML_QUEUE_URL (redis://:PASSWORD@redis.piml.svc:6379/0 or
amqp://piml:PASSWORD@rabbitmq.piml.svc:5672/ in the cluster; $PIML_QUEUE_PASSWORD may carry the password).
Needs only the `redis` (or `pika`) client besides piml's own queue modules.
"""

from __future__ import annotations

import math
import time
from typing import Any

from piml.errors import PimlError, Problem
from piml.queue import TERMINAL, Broker, connect, make_request, redact


def _broker(queue_url: str | None, broker: Broker | None) -> Broker:
    return broker if broker is not None else connect(queue_url)


def submit(
    model: str,
    input: str,
    params: dict[str, Any] | None = None,
    *,
    output: str | None = None,
    id: str | None = None,
    queue_url: str | None = None,
    broker: Broker | None = None,
    wait: bool = False,
    timeout: float = 3600,
) -> Any:
    """Validate and queue a request; its id, or with wait=True its final state (a dict)."""
    request = make_request(model, input, params, output, id)
    own = broker is None
    b = _broker(queue_url, broker)
    try:
        b.submit(request)
        if wait:
            return follow(b, request.id, timeout)
        return request.id
    finally:
        if own:
            b.close()


def status(request_id: str, *, queue_url: str | None = None, broker: Broker | None = None) -> dict | None:
    """The request's state, or None when there is no such request (or its record expired)."""
    own = broker is None
    b = _broker(queue_url, broker)
    try:
        return b.get(request_id)
    finally:
        if own:
            b.close()


def wait(request_id: str, timeout: float = 3600, *, queue_url: str | None = None, broker: Broker | None = None) -> dict:
    """Block until the request succeeded or failed (bounded by `timeout` seconds); its final state."""
    own = broker is None
    b = _broker(queue_url, broker)
    try:
        return follow(b, request_id, timeout)
    finally:
        if own:
            b.close()


def follow(broker: Broker, request_id: str, timeout: float, poll: float = 1.0, on_change=None) -> dict:
    if not math.isfinite(timeout) or timeout <= 0:
        raise PimlError(Problem("timeout", f"{timeout:g} is not a number of seconds to wait", "give more than 0"), 2)
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            job = broker.get(request_id)
        except broker.lost as exc:
            raise PimlError(
                Problem(
                    redact(broker.url),
                    f"the broker went away while following {request_id} ({type(exc).__name__})",
                    f"the request stays queued if the broker kept it: `piml jobs {request_id}` once it is back",
                ),
                1,
            ) from None
        if job is None:
            raise PimlError(Problem(request_id, "no such request", "check the id with `piml jobs`"), 2)
        if on_change and (job["state"], job.get("attempts")) != last:
            on_change(job)
            last = (job["state"], job.get("attempts"))
        if job["state"] in TERMINAL:
            return job
        if time.monotonic() >= deadline:
            raise PimlError(
                Problem(
                    request_id, f"still {job['state']} after {timeout:g} s", f"follow it with `piml jobs {request_id}`"
                ),
                1,
            )
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
