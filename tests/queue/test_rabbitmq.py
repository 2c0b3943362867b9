"""The same runner and commands with queue.kind rabbitmq, against a real RabbitMQ node on loopback."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from piml.queue import make_request
from tests.queue.helpers import assert_no_secrets, held_dataset, kill_runner_mid_request, run_piml, run_runner


@pytest.fixture
def rabbit(rabbitmq_server):
    import pika

    from piml.queue import connect

    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_server.url))
    channel = connection.channel()
    for queue in ("piml.requests", "piml.dead", "piml.state"):
        channel.queue_delete(queue)
    connection.close()
    broker = connect(rabbitmq_server.url)
    yield broker
    broker.close()


@pytest.fixture
def rabbit_env(runner_env, rabbitmq_server):
    return {**runner_env, "PIML_QUEUE_URL": rabbitmq_server.url}


def test_request_runs_and_state_is_kept(rabbit, rabbit_env, rabbitmq_server, registered_model, dataset, tmp_path):
    from tests.queue.test_runner import assert_predictions

    env = {k: v for k, v in rabbit_env.items() if k != "PIML_QUEUE_URL"}
    out = run_piml(env, "submit", registered_model.uri, str(dataset), "--queue-url", rabbitmq_server.url)
    assert out.returncode == 0, out.stderr
    request_id = out.stdout.strip()
    assert rabbit.queue_length() == 1 and rabbit.get(request_id)["state"] == "queued"
    assert run_runner(rabbit_env, "--once").returncode == 0
    job = rabbit.get(request_id)
    assert job["attempts"] == 1
    assert_predictions(job, registered_model, pd.read_csv(dataset), tmp_path)
    listed = json.loads(run_piml(env, "jobs", "--json", "--queue-url", rabbitmq_server.url).stdout)["jobs"]
    assert [(j["id"], j["state"], j["run_id"]) for j in listed] == [(request_id, "succeeded", job["run_id"])]
    assert rabbit.queue_length() == 0


def test_failures_retry_then_dead_letter_and_malformed_fails_at_once(rabbit, rabbit_env, registered_model, dataset):
    unknown = make_request("models:/no-such-model/1", str(dataset))
    rabbit.submit(unknown)
    rabbit._publish("piml.requests", b'{"id": "bad-2", "model": "models:/m/1"}')
    out = run_runner(rabbit_env, "--drain", "--wait", "1")
    assert out.returncode == 0, out.stderr
    job = rabbit.get(unknown.id)
    assert (
        job["state"] == "failed"
        and job["attempts"] == 3
        and job["error"].startswith("model: cannot load models:/no-such-model/1")
    )
    bad = rabbit.get("bad-2")
    assert (
        bad["state"] == "failed"
        and bad["attempts"] == 1
        and bad["error"] == "malformed request: request: has no 'input'; add \"input\""
    )
    assert {letter["id"] for letter in rabbit.dead_letters()} == {unknown.id, "bad-2"}
    assert rabbit.queue_length() == 0


def test_killed_runner_request_is_delivered_again(rabbit, rabbit_env, registered_model, dataset, tmp_path):
    with held_dataset(dataset) as (url, release):  # the victim waits on its data until killed
        request = make_request(registered_model.uri, url)
        rabbit.submit(request)
        kill_runner_mid_request(rabbit, rabbit_env, request, tmp_path / "victim.log")
        release.set()
        out = run_runner(rabbit_env, "--once", "--wait", "20")
    assert out.returncode == 0, out.stderr
    job = rabbit.get(request.id)
    assert job["state"] == "succeeded" and job["attempts"] == 2
    assert_no_secrets((tmp_path / "victim.log").read_text())


def test_reading_state_while_others_write_it(rabbit, rabbitmq_server):
    """Events written while a client reads the state stream arrive after its marker; the reader must drop
    them without rejecting (a stream closes the connection on a reject)."""
    import threading

    from piml.queue import connect

    writer = connect(rabbitmq_server.url)
    writer._event("busy", state="running")
    stop = threading.Event()

    def write():  # a steady trickle, as runners write; the stream (replayed on every read) stays small
        while not stop.wait(0.002):
            writer._event("busy", state="running")

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        for _ in range(20):
            assert rabbit.get("busy")["state"] == "running"
    finally:
        stop.set()
        thread.join(timeout=10)
        writer.close()


def test_a_user_without_password_in_the_url_takes_the_given_password(rabbit, rabbitmq_server):
    """The runner's and the tunnel's URLs name the user only (amqp://piml@host/); the password comes apart."""
    from urllib.parse import urlsplit

    from piml.queue import connect

    parts = urlsplit(rabbitmq_server.url)
    url = f"amqp://{parts.username}@127.0.0.1:{parts.port}/"
    broker = connect(url, password=rabbitmq_server.password)
    try:
        assert broker.queue_length() == 0
    finally:
        broker.close()
    with pytest.raises(Exception, match="refused the user or password"):
        connect(url, password="wrong-" + rabbitmq_server.password[:4])


def _lose_everything(rabbitmq_server) -> None:
    """What a re-flashed board or a lost volume leaves: a RabbitMQ without piml's queues and stream."""
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(rabbitmq_server.url))
    channel = connection.channel()
    for queue in ("piml.requests", "piml.dead", "piml.state"):
        channel.queue_delete(queue)
    connection.close()


def test_state_taken_without_taking_anything_comes_back_into_a_broker_that_lost_it(
    rabbit, rabbit_env, rabbitmq_server, registered_model, dataset
):
    """piml backup's RabbitMQ part (export_state) and piml restore's merge (import_state), on a real node: the
    history of every request and the dead letters come back, the requests that were waiting or running are
    queued again and a runner runs them, and a second merge changes nothing."""
    from piml.queue import connect

    done = make_request(registered_model.uri, str(dataset))
    rabbit.submit(done)
    assert run_runner(rabbit_env, "--once").returncode == 0
    dead = make_request("models:/no-such-model/1", str(dataset))
    rabbit.submit(dead)
    assert run_runner(rabbit_env, "--drain", "--wait", "1").returncode == 0
    running = make_request(registered_model.uri, str(dataset))
    rabbit.submit(running)
    held = rabbit.take("runner-x", wait=5)  # a runner holds it, running, when the backup is taken
    assert held is not None and held.id == running.id
    rabbit.running(held, "pi2")
    waiting = [make_request(registered_model.uri, str(dataset), params={"batch_size": 10 + i}) for i in range(2)]
    for request in waiting:
        rabbit.submit(request)
    before = {job["id"]: job for job in rabbit.jobs(limit=100)}
    assert before[running.id]["state"] == "running" and before[dead.id]["state"] == "failed"

    state = rabbit.export_state()
    assert rabbit.queue_length() == 2 and [letter["id"] for letter in rabbit.dead_letters()] == [dead.id]
    rabbit.close()
    _lose_everything(rabbitmq_server)

    fresh = connect(rabbitmq_server.url)
    try:
        assert fresh.import_state(state) == {"requests": 5, "queued": 3, "dead letters": 1}
        after = {job["id"]: job for job in fresh.jobs(limit=100)}
        assert after[done.id] == before[done.id] and after[dead.id] == before[dead.id]
        assert [after[r.id]["state"] for r in (*waiting, running)] == ["queued"] * 3
        assert fresh.queue_length() == 3 and [letter["id"] for letter in fresh.dead_letters()] == [dead.id]
        assert fresh.import_state(state) == {"requests": 0, "queued": 0, "dead letters": 0}
        assert fresh.queue_length() == 3
    finally:
        fresh.close()
    out = run_runner(rabbit_env, "--drain", "--wait", "1")  # the requests queued again are whole requests
    assert out.returncode == 0, out.stderr
    check = connect(rabbitmq_server.url)
    try:
        states = {r.id: check.get(r.id)["state"] for r in (*waiting, running)}
        assert states == {r.id: "succeeded" for r in (*waiting, running)}, states
        assert check.get(waiting[1].id)["params"] == before[waiting[1].id]["params"]
    finally:
        check.close()
