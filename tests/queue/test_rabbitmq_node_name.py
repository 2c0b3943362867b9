"""RabbitMQ keeps a node's data under its node name, and the image's node name is rabbit@<the pod's host name>.
A Deployment names each new pod anew, so piml fixes the pod's host name: without it, a re-created pod was a new,
empty node and the queued requests stayed behind in the old node's directory (found in upstream research for
#14). Real rabbitmq-server (Debian's), one data directory, nodes started on it one after the other."""

from __future__ import annotations

import secrets
import socket

import pytest

from tests.ports import free_port
from tests.queue.helpers import SECRETS
from tests.services import RabbitServer, rabbit_node

pytestmark = pytest.mark.services


def publish(url: str, body: bytes) -> None:
    import pika

    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        channel.queue_declare("piml-kept", durable=True)
        channel.basic_publish("", "piml-kept", body, pika.BasicProperties(delivery_mode=2))


def waiting(url: str) -> int | None:
    """Messages in the durable queue, or None when the node has no such queue."""
    import pika

    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        try:
            return channel.queue_declare("piml-kept", passive=True).method.message_count
        except pika.exceptions.ChannelClosedByBroker:
            return None


def test_queued_messages_belong_to_the_node_name_so_the_pod_keeps_one(tmp_path):
    server = RabbitServer(free_port(), secrets.token_urlsafe(18))
    SECRETS.append(server.password)
    other_host = socket.gethostname().split(".")[0]  # a second name that resolves here, as a new pod's would
    with rabbit_node(tmp_path, server, "rabbit@localhost"):
        publish(server.url, b"a queued request")
    with rabbit_node(tmp_path, server, f"rabbit@{other_host}"):
        assert waiting(server.url) is None  # another name: an empty node, on the same volume
    with rabbit_node(tmp_path, server, "rabbit@localhost"):
        assert waiting(server.url) == 1  # the same name: the request is still there


def test_the_rendered_broker_pod_has_a_fixed_host_name(tmp_path):
    from piml.plan import make_plan
    from tests.render.test_render import all_objects, cluster_for

    cluster = cluster_for("pi5-3x8gb", tmp_path, {"queue": {"kind": "rabbitmq"}})
    (deployment,) = [
        o
        for o in all_objects(cluster, make_plan(cluster))
        if (o["kind"], o["metadata"]["name"]) == ("Deployment", "rabbitmq")
    ]
    assert deployment["spec"]["template"]["spec"]["hostname"] == "rabbitmq"  # the image's node: rabbit@rabbitmq
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two nodes of that name on the volume
