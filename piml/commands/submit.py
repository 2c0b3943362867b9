"""`piml submit MODEL INPUT`: validate a request, queue it, print its id; `--wait` follows it to the end."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from piml.output import console, print_json


@contextmanager
def open_broker(project: Path | None, inventory: Path | None, queue_url: str | None) -> Iterator:
    """The broker: --queue-url / $PIML_QUEUE_URL directly, else the project's cluster through a port-forward."""
    from piml.queue import connect

    url = queue_url or os.environ.get("PIML_QUEUE_URL")
    if url:
        broker = connect(url)
        try:
            yield broker
        finally:
            broker.close()
        return
    from piml.errors import InputError, Problem
    from piml.project import ProjectPaths, load_cluster
    from piml.queue.tunnel import cluster_broker

    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    if not cluster.config.queue.enabled:
        raise InputError(
            Problem(
                cluster.paths.show(cluster.paths.config),
                "the queue is switched off (queue.enabled: false)",
                "switch it on and run `piml up`, or pass --queue-url",
            )
        )
    with cluster_broker(cluster) as broker:
        yield broker


def run_submit(
    model: str,
    input: str,
    params: list[str],
    output: str | None,
    request_id: str | None,
    wait: bool,
    timeout: float,
    queue_url: str | None,
    project: Path | None,
    inventory: Path | None,
    json: bool,
) -> None:
    from piml.client import follow
    from piml.errors import InputError, PimlError, Problem
    from piml.queue import FAILED, make_request
    from piml.queue.request import parse_param

    if wait and (not math.isfinite(timeout) or timeout <= 0):
        raise InputError(
            Problem(
                "--timeout", f"{timeout:g} is not a number of seconds to wait", "give more than 0, e.g. --timeout 600"
            )
        )
    values: dict = {}
    for text in params:
        name, value = parse_param(text)
        if name in values:
            raise InputError(
                Problem(
                    "--param", f"{name} is given twice ({values[name]!r} and {value!r})", "give each parameter once"
                )
            )
        values[name] = value
    request = make_request(model, input, values, output, request_id)
    with open_broker(project, inventory, queue_url) as broker:
        broker.submit(request)
        if not wait:
            if json:
                print_json({"id": request.id, "state": "queued", "request": request.to_dict()})
            else:
                sys.stdout.write(request.id + "\n")
            return
        if not json:
            sys.stdout.write(request.id + "\n")
            sys.stdout.flush()

        def show(job: dict) -> None:
            if json:
                return
            where = f" on {job['node']}" if job.get("node") and job["state"] == "running" else ""
            attempt = f" (attempt {job['attempts']})" if job.get("attempts") else ""
            note = f": {job['error']}" if job.get("error") and job["state"] != "failed" else ""
            sys.stderr.write(f"{job['state']}{where}{attempt}{note}\n")

        job = follow(broker, request.id, timeout, on_change=show)
    if json:
        print_json({"jobs": [job]})
    elif job["state"] != FAILED:
        console().print(
            f"{job['rows']} rows in {job['seconds']:.1f} s; predictions: {job['run_url'] or job['run_id']}",
            markup=False,
        )
    if job["state"] == FAILED:
        raise PimlError(
            Problem(
                request.id,
                f"failed after {job['attempts']} attempt(s): {job['error']}",
                "see `piml jobs " + request.id + "` and the MLflow run",
            ),
            1,
        )
