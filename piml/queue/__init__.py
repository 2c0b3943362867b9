"""The request queue: requests (piml.queue.request), brokers (Redis, RabbitMQ) and their states.

Pure standard library at import: the broker clients (redis, pika) load when a broker is connected.
"""

from piml.queue.base import FAILED, QUEUED, RUNNING, STATES, SUCCEEDED, TERMINAL, Broker, Delivery, connect, redact
from piml.queue.request import Request, RequestError, make_request, parse_message

__all__ = [
    "FAILED",
    "QUEUED",
    "RUNNING",
    "STATES",
    "SUCCEEDED",
    "TERMINAL",
    "Broker",
    "Delivery",
    "Request",
    "RequestError",
    "connect",
    "make_request",
    "parse_message",
    "redact",
]
