"""component_checks against real services: MLflow with basic auth, a Dask scheduler and worker, a Ray head,
Redis (and RabbitMQ); then each one down, wrong or misconfigured, alone."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import replace

import pytest

from piml.config import PimlConfig
from piml.health import probes
from piml.health.probes import component_checks
from tests.health.helpers import assert_rows_clean, by_key, rows_text
from tests.ports import free_port
from tests.queue.helpers import answering_http

ALL = [
    ("mlflow", "health"),
    ("mlflow", "auth"),
    ("dask", "health"),
    ("dask", "workers"),
    ("ray", "dashboard"),
    ("ray", "auth"),
    ("ray", "nodes"),
    ("queue", "broker"),
    ("queue", "queues"),
]


def config(**settings) -> PimlConfig:
    return PimlConfig.model_validate(settings)


def dead_url(scheme: str = "http") -> str:
    """A loopback address where nothing listens: a stopped service."""
    return f"{scheme}://127.0.0.1:{free_port()}"


@contextmanager
def stand_in(answer, delay: float = 0.0):
    """A loopback HTTP server answering every GET with answer(path, headers) -> (status, text), after `delay` s."""
    with answering_http(answer, hold=delay) as (url, _release):
        yield url


def test_healthy_platform_passes_every_probe(endpoints, mlflow_server, redis_server):
    rows = component_checks(endpoints, PimlConfig())
    assert [(r.target, r.check) for r in rows] == ALL
    assert all(r.status == "pass" and r.group == "components" for r in rows), rows_text(rows)
    got = by_key(rows)
    assert got["mlflow", "health"].detail == f"answers at {mlflow_server.url}"
    assert got["mlflow", "auth"].detail == "user 'admin' is let in; a call without credentials is refused (401)"
    assert got["dask", "workers"].detail == "1 worker on 1 host, 1 thread"
    assert got["ray", "dashboard"].detail.startswith("Ray 2.")
    assert got["ray", "nodes"].detail == "1 node alive (1 head), 1 CPU"
    assert (
        got["queue", "broker"].detail.startswith("Redis ")
        and f"redis://127.0.0.1:{redis_server.port}/0" in got["queue", "broker"].detail
    )
    assert got["queue", "queues"].detail.startswith("piml:queue: ")
    assert all(r.seconds < 5 for r in rows)
    assert_rows_clean(rows)


@pytest.mark.parametrize("component", ["mlflow", "dask", "ray", "queue"])
def test_a_stopped_component_fails_alone(endpoints, component):
    """Its address answers nothing (as a stopped service or a dead port-forward): its first row fails and says
    where, its other row is skipped, every other component still passes."""
    field = {"mlflow": "mlflow_url", "dask": "dask_dashboard_url", "ray": "ray_dashboard_url", "queue": "queue_url"}[
        component
    ]
    url = dead_url("redis" if component == "queue" else "http") + ("/0" if component == "queue" else "")
    rows = component_checks(replace(endpoints, **{field: url}), PimlConfig())
    first, *rest = [r for r in rows if r.target == component]
    assert first.status == "fail" and rest and all(r.status == "skip" for r in rest), rows_text(rows)
    if component == "queue":
        assert first.detail == f"cannot reach Redis (ConnectionError) at {url}"
        assert "kubectl -n piml logs deploy/redis" in first.fix
    else:
        assert first.detail.endswith(f"does not answer at {url} (connection refused)"), first.detail
        assert first.fix.startswith("kubectl -n piml ")
    assert all(r.detail == f"not checked: {component} does not answer" for r in rest)
    others = [r for r in rows if r.target != component]
    assert len(others) == len([k for k in ALL if k[0] != component]) and all(r.status == "pass" for r in others), (
        rows_text(rows)
    )


def test_dask_without_workers_fails_the_workers_row(endpoints, idle_dask):
    rows = component_checks(
        replace(endpoints, dask_dashboard_url=idle_dask.dashboard_url), config(ray={"enabled": False})
    )
    got = by_key(rows)
    assert got["dask", "health"].status == "pass"
    assert got["dask", "workers"].status == "fail"
    assert got["dask", "workers"].detail == "the scheduler has 0 workers: nothing can compute"
    assert "app.kubernetes.io/name=dask-worker" in got["dask", "workers"].fix


def test_a_url_that_is_not_the_component_says_so(endpoints, ray_head):
    """MLflow's URL pointing at the Ray dashboard (a wrong port-forward or prefix)."""
    rows = component_checks(replace(endpoints, mlflow_url=ray_head.dashboard_url), config(dask={"enabled": False}))
    got = by_key(rows)
    assert got["mlflow", "health"].status == "fail"
    assert (
        "answered HTTP 401" in got["mlflow", "health"].detail and "is this MLflow" in got["mlflow", "health"].detail
    )  # Ray asks for its token
    assert got["ray", "nodes"].status == "pass" and got["queue", "queues"].status == "pass"


def test_wrong_mlflow_password_fails_the_auth_row(endpoints, mlflow_server):
    wrong = "not-the-password-" + "x" * 8
    rows = component_checks(replace(endpoints, mlflow_password=wrong), PimlConfig())
    got = by_key(rows)
    assert got["mlflow", "health"].status == "pass"
    auth = got["mlflow", "auth"]
    assert auth.status == "fail"
    assert auth.detail == "MLflow refused user 'admin' (HTTP 401): the password piml has is not the server's"
    assert "kubectl -n piml get secret mlflow" in auth.fix
    assert all(r.status == "pass" for r in rows if r.target != "mlflow"), rows_text(rows)
    assert_rows_clean(rows, wrong)


def test_mlflow_without_basic_auth_fails_the_auth_row(endpoints):
    """A server that lets anyone in (basic auth off): the auth row must fail even though the credentials work."""
    with stand_in(lambda path, headers: (200, "OK" if path == "/health" else '{"experiments": []}')) as url:
        rows = component_checks(
            replace(endpoints, mlflow_url=url),
            config(dask={"enabled": False}, ray={"enabled": False}, queue={"enabled": False}),
        )
    got = by_key(rows)
    assert [(r.target, r.check) for r in rows] == [("mlflow", "health"), ("mlflow", "auth")]
    assert got["mlflow", "health"].status == "pass"
    assert got["mlflow", "auth"].status == "fail"
    assert (
        got["mlflow", "auth"].detail
        == "MLflow answers its API without credentials (HTTP 200, not 401): basic auth is off"
    )
    assert "--app-name basic-auth" in got["mlflow", "auth"].fix


def test_wrong_redis_password_fails_the_broker_row(endpoints, redis_server):
    wrong = "wrong-redis-password-" + "y" * 6
    rows = component_checks(
        replace(endpoints, queue_password=wrong), config(dask={"enabled": False}, ray={"enabled": False})
    )
    got = by_key(rows)
    assert got["queue", "broker"].status == "fail"
    assert got["queue", "broker"].detail == f"Redis refused the password at redis://127.0.0.1:{redis_server.port}/0"
    assert got["queue", "queues"].status == "skip"
    assert got["mlflow", "auth"].status == "pass"
    # the password inside the URL (no separate one) is redacted in the detail, and is not shown either
    rows = component_checks(
        replace(endpoints, queue_url=f"redis://:{wrong}@127.0.0.1:{redis_server.port}/0", queue_password=None),
        config(mlflow={"enabled": False}, dask={"enabled": False}, ray={"enabled": False}),
    )
    assert (
        rows[0].status == "fail"
        and rows[0].detail == f"Redis refused the password at redis://:***@127.0.0.1:{redis_server.port}/0"
    )
    assert_rows_clean(rows, wrong)


def test_disabled_components_give_no_rows_and_missing_addresses_fail(endpoints):
    cfg = config(dask={"enabled": False}, ray={"enabled": False})
    rows = component_checks(
        replace(
            endpoints,
            mlflow_url=None,
            queue_url=None,
            unreachable={"mlflow": "no running pod of deploy/mlflow to forward a port to"},
        ),
        cfg,
    )
    assert [(r.target, r.check, r.status) for r in rows] == [("mlflow", "health", "fail"), ("queue", "broker", "fail")]
    assert rows[0].detail == "could not be reached: no running pod of deploy/mlflow to forward a port to"
    assert rows[1].detail == "could not be reached: no address for the redis broker"
    assert (
        component_checks(
            endpoints,
            config(
                mlflow={"enabled": False}, dask={"enabled": False}, ray={"enabled": False}, queue={"enabled": False}
            ),
        )
        == []
    )


def test_queue_kind_must_match_the_url(endpoints):
    rows = component_checks(
        endpoints,
        config(mlflow={"enabled": False}, dask={"enabled": False}, ray={"enabled": False}, queue={"kind": "rabbitmq"}),
    )
    assert rows[0].status == "fail" and "is not rabbitmq (piml.yaml's queue.kind)" in rows[0].detail


def test_rabbitmq_broker_and_queues(rabbitmq_server):
    url = f"amqp://piml@127.0.0.1:{rabbitmq_server.port}/"  # the password apart, as a cluster's Secret gives it
    from piml.health.endpoints import Endpoints

    cfg = config(mlflow={"enabled": False}, dask={"enabled": False}, ray={"enabled": False}, queue={"kind": "rabbitmq"})
    rows = component_checks(Endpoints(queue_url=url, queue_password=rabbitmq_server.password), cfg)
    assert [r.status for r in rows] == ["pass", "pass"], rows_text(rows)
    assert rows[0].detail.startswith("RabbitMQ ") and rows[0].detail.endswith(f"a connection opens at {url}")
    assert rows[1].detail.startswith("piml.requests: ") and "piml.state stream declared" in rows[1].detail
    wrong = "wrong-rabbit-password"
    rows = component_checks(Endpoints(queue_url=url, queue_password=wrong), cfg)
    assert rows[0].status == "fail" and rows[0].detail == f"RabbitMQ refused the user or password at {url}"
    assert_rows_clean(rows, wrong)


def test_probes_run_in_parallel_and_each_call_is_bounded(endpoints, monkeypatch):
    """MLflow hangs (no answer for 30 s), the Dask dashboard answers slowly (1 s per call): the hanging call is
    cut at HTTP_TIMEOUT and the whole takes about the slowest component, not the sum."""
    monkeypatch.setattr(probes, "HTTP_TIMEOUT", 1.5)
    counts = '{"workers": 2, "cores": 4, "hosts": 2}'
    with (
        stand_in(lambda path, headers: (200, "OK"), delay=30) as hanging,
        stand_in(lambda path, headers: (200, "ok" if path.endswith("/health") else counts), delay=1.0) as slow,
    ):
        started = time.monotonic()
        rows = component_checks(replace(endpoints, mlflow_url=hanging, dask_dashboard_url=slow), PimlConfig())
        took = time.monotonic() - started
    got = by_key(rows)
    assert got["mlflow", "health"].status == "fail"
    assert got["mlflow", "health"].detail == f"MLflow does not answer at {hanging} (no answer within 1.5 s)"
    assert (
        got["dask", "workers"].status == "pass" and got["dask", "workers"].detail == "2 workers on 2 hosts, 4 threads"
    )
    assert took < 3.2, f"{took:.1f} s: the probes did not run in parallel"  # sequential: 1.5 + 2 + more
