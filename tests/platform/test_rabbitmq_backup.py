"""RabbitMQ's part of `piml backup` and `piml restore` (queue.kind: rabbitmq), through the REAL API server: the
state stream and the dead letters are read through piml's port-forward to the broker's pod (the real API server,
the kubelet's own streaming code in the stand-in kubelet) with the password from the rendered Secret, and merged
back the same way, while RabbitMQ runs. The broker is a real RabbitMQ node (Debian's) behind the pod's port.
(tests/queue/test_rabbitmq.py shows the merge on the broker itself: history, waiting requests run again.)"""

from __future__ import annotations

import json

import pika
import pytest
import yaml

from piml.backup import archive
from piml.backup.take import take_rabbitmq_state
from piml.fsutil import write_atomic
from piml.kube.deploy import deploy
from piml.queue import connect, make_request
from tests.platform.conftest import FAST
from tests.platform.test_port_forward import behind

SETTINGS = {"queue": {"kind": "rabbitmq"}}


def lose_everything(url: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    for queue in ("piml.requests", "piml.dead", "piml.state"):
        channel.queue_delete(queue)
    connection.close()


@pytest.fixture
def rabbit_lab(project, plane, rabbitmq_server):
    """The platform with queue.kind rabbitmq on the real control plane; the broker pod's port 5672 leads to the
    real RabbitMQ node, whose user piml has the password of the project's Secret."""
    project.secrets.update(rabbitmq_password=rabbitmq_server.password)
    write_atomic(project.root / ".piml" / "secrets.yaml", json.dumps(project.secrets), mode=0o600)
    (project.root / "piml.yaml").write_text(yaml.safe_dump(SETTINGS))
    cluster, rendered = project.render(SETTINGS)
    deploy(cluster, project.kubeconfig, rendered, FAST)
    kube = plane.kube()
    try:
        pods = kube.request("GET", "/api/v1/namespaces/piml/pods", {"labelSelector": "app.kubernetes.io/name=rabbitmq"})
        behind(plane, "piml", pods["items"][0]["metadata"]["name"], 5672, rabbitmq_server.port)
    finally:
        kube.close()
    lose_everything(rabbitmq_server.url)
    yield cluster
    (plane.dir / "forwards.json").unlink(missing_ok=True)
    lose_everything(rabbitmq_server.url)


def test_the_queue_is_taken_and_merged_back_through_the_port_forward(rabbit_lab, rabbitmq_server, piml, tmp_path):
    cluster = rabbit_lab
    broker = connect(rabbitmq_server.url)
    try:
        failed = make_request("models:/iris/1", "s3://data/broken.csv")
        broker.submit(failed)
        held = broker.take("runner-x", wait=5)
        assert held is not None and held.id == failed.id
        broker.fail(held, "the dataset is broken", retry=False, retries=0)
        waiting = [make_request("models:/iris/1", "s3://data/rows.csv") for _ in range(2)]
        for request in waiting:
            broker.submit(request)
    finally:
        broker.close()

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    versions = {"piml": "test", "mlflow": cluster.config.mlflow.version, "k3s": "v1"}
    made = archive.Manifest(project="lab", created="2026-12-03T21:00:00+00:00", versions=versions)
    made.parts["queue"] = take_rabbitmq_state(cluster, scratch / "queue.tar")
    assert (made.parts["queue"]["requests"], made.parts["queue"]["dead letters"]) == (3, 1)
    (tmp_path / "backups").mkdir()
    archived = archive.write_archive(tmp_path / "backups", made, {"queue": scratch / "queue.tar"})
    lose_everything(rabbitmq_server.url)

    done = piml("restore", str(archived), "--yes", "--json", cwd=cluster.paths.root)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["queue"] == {"requests": 3, "queued": 2, "dead letters": 1} and result["ok"], result
    assert set(result) == {"archive", "created", "restored", "kept", "queue", "ok"}  # nothing was stopped
    again = piml("restore", str(archived), "--yes", "--json", cwd=cluster.paths.root)
    assert json.loads(again.stdout)["queue"] == {"requests": 0, "queued": 0, "dead letters": 0}
    broker = connect(rabbitmq_server.url)
    try:
        assert broker.queue_length() == 2
        assert sorted(j["id"] for j in broker.jobs() if j["state"] == "queued") == sorted(r.id for r in waiting)
        assert [letter["id"] for letter in broker.dead_letters()] == [failed.id]
    finally:
        broker.close()

    (cluster.paths.root / "piml.yaml").write_text(yaml.safe_dump({"queue": {"kind": "redis"}}))
    refused = piml("restore", str(archived), "--yes", cwd=cluster.paths.root)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "holds rabbitmq's queue and this project runs redis" in refused.stderr
