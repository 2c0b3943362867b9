"""`piml serve list|predict|reload`: the serving routes from the user's machine.

Reached through the Kubernetes API (a port-forward to the serving head's Serve proxy, nothing else exposed), or
directly with --url / $PIML_SERVE_URL (a machine that reaches the proxy, or a local Ray Serve)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from piml.errors import EXIT_FAILED, InputError, PimlError, Problem
from piml.output import console, print_json


@contextmanager
def open_routes(project: Path | None, inventory: Path | None, url: str | None, need_project: bool) -> Iterator:
    """(RouteClient, the project's Cluster or None): --url / $PIML_SERVE_URL directly, else a port-forward."""
    from piml.serve.client import RouteClient

    url = url or os.environ.get("PIML_SERVE_URL")
    cluster = _cluster(project, inventory) if (need_project or not url) else None
    token = os.environ.get("PIML_SERVE_TOKEN") or _token(cluster, project)
    if url:
        yield RouteClient(url, token), cluster
        return
    assert cluster is not None
    if not cluster.config.serve.enabled:
        raise InputError(
            Problem(
                cluster.paths.show(cluster.paths.config),
                "serving is switched off (serve.enabled: false)",
                "add serve: {enabled: true, routes: {...}} and run `piml up`, or pass --url",
            )
        )
    kubeconfig = cluster.paths.kubeconfig
    if not kubeconfig.is_file():
        raise InputError(Problem(cluster.paths.show(kubeconfig), "no kubeconfig", "run `piml up` first, or pass --url"))
    from piml.kube.client import core_api
    from piml.queue.tunnel import forward
    from piml.serve.apps import HEAD_SELECTOR, SERVE_PORT

    forwarder = forward(core_api(kubeconfig), cluster.config.namespace, HEAD_SELECTOR, SERVE_PORT, "serving head")
    try:
        yield RouteClient(f"http://127.0.0.1:{forwarder.port}", token), cluster
    finally:
        forwarder.close()


def _cluster(project: Path | None, inventory: Path | None):
    from piml.project import ProjectPaths, load_cluster

    return load_cluster(ProjectPaths.resolve(project, inventory))


def _token(cluster, project: Path | None) -> str | None:
    from piml.secrets import load_existing

    state = cluster.paths.state if cluster is not None else Path(project or ".") / ".piml"
    return load_existing(state).get("serve_token")


def run_list(project: Path | None, inventory: Path | None, url: str | None, as_json: bool) -> None:
    """One row per route of piml.yaml: what it serves now, on how many replicas."""
    from piml.serve.apps import route_url

    with open_routes(project, inventory, url, need_project=True) as (client, cluster):
        rows, problems = [], []
        for name, route in cluster.config.serve.routes.items():
            row = {"route": name, "uri": route.model, "url": f"{route_url(name)}/predict"}
            try:
                info = client.info(name)
                row.update(
                    {k: info.get(k) for k in ("model", "version", "since", "replicas", "replicas_on_version")},
                    ok=True,
                )
            except PimlError as exc:
                problem = exc.problems[0]
                row.update(ok=False, error=f"{problem.what}; {problem.fix}" if problem.fix else problem.what)
                problems.append(problem)
            rows.append(row)
    if as_json:
        print_json({"routes": rows})
    else:
        from rich.table import Table

        table = Table(title="serving routes", title_justify="left")
        for column in ("route", "model", "version", "replicas", "since", "path"):
            table.add_column(column)
        for row in rows:
            if row["ok"]:
                replicas = f"{row['replicas_on_version']}/{row['replicas']}"
                table.add_row(row["route"], row["uri"], str(row["version"]), replicas, row["since"], row["url"])
            else:
                table.add_row(row["route"], row["uri"], "-", "-", "-", f"[red]{row['error']}[/]")
        console().print(table)
    if problems:
        raise PimlError(problems, EXIT_FAILED)


def read_input(source: str) -> tuple[bytes, str]:
    """FILE or '-' (stdin), with its content type: .csv / .json by name, else JSON when it starts like JSON."""
    try:
        raw = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as exc:
        fix = "give a JSON or CSV file, or - for stdin"
        raise InputError(Problem(source, f"cannot read it ({exc.strerror})", fix)) from None
    if not raw.strip():
        raise InputError(Problem(source, "is empty", 'give rows as JSON ({"inputs": [[...]]}) or CSV with a header'))
    suffix = Path(source).suffix.lower() if source != "-" else ""
    if suffix == ".csv" or (suffix != ".json" and raw.lstrip()[:1] not in (b"{", b"[")):
        return raw, "text/csv"
    return raw, "application/json"


def run_predict(route: str, source: str, project, inventory, url: str | None, as_json: bool) -> None:
    body, content_type = read_input(source)
    with open_routes(project, inventory, url, need_project=False) as (client, _):
        answer = client.predict(route, body, content_type)
    if as_json:
        print_json(answer)
        return
    print(f"{route}: {answer.get('model')} version {answer.get('version')}", file=sys.stderr)
    for value in answer.get("predictions", []):
        print(json.dumps(value))


def run_reload(route: str, project, inventory, url: str | None, as_json: bool) -> None:
    with open_routes(project, inventory, url, need_project=False) as (client, _):
        answer = client.reload(route)
    if as_json:
        print_json(answer)
    else:
        console().print(
            f"{route}: serving {answer.get('model')} version {answer.get('version')} "
            f"on {answer.get('replicas')} replica(s)",
            markup=False,
            highlight=False,
        )
