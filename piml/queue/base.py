"""What every broker offers the client (submit, list) and the runner (take, report), and the request states.

States: queued -> running -> succeeded | failed. A failed attempt that may be retried goes back to queued
(with its error and attempt count); after the last attempt, or at once for a malformed request, the request
is failed and parked on the dead-letter list with its error.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from piml.errors import InputError, Problem

QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
TERMINAL = (SUCCEEDED, FAILED)
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED)
DEFAULT_RETRIES = 3  # piml.yaml queue.retries: attempts after the first before the dead-letter list
JOB_FIELDS = (
    "id",
    "state",
    "model",
    "input",
    "output",
    "params",
    "submitted_at",
    "started_at",
    "finished_at",
    "node",
    "runner",
    "attempts",
    "run_id",
    "run_url",
    "rows",
    "seconds",
    "error",
)


def now() -> str:
    return _iso(time.time())


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


@dataclass
class Delivery:
    """One message a runner took: its raw text, the request's id (when it has one) and the attempt number."""

    raw: bytes
    id: str | None
    attempts: int
    runner: str
    tag: Any = None  # the broker's own handle (RabbitMQ delivery tag)
    extra: dict = field(default_factory=dict)


def running_fields(delivery: Delivery, node: str) -> dict[str, Any]:
    """What a request's record says once a runner on `node` has taken it (both brokers record it so)."""
    return {
        "state": RUNNING,
        "node": node,
        "runner": delivery.runner,
        "started_at": now(),
        "finished_at": None,
        "error": None,
    }


class Broker(Protocol):
    lost: tuple[type[BaseException], ...]  # what the broker's library raises when the broker goes away mid-command
    url: str

    def submit(self, request) -> None: ...
    def get(self, request_id: str) -> dict | None: ...
    def jobs(self, limit: int = 50) -> list[dict]: ...
    def dead_letters(self, limit: int = 50) -> list[dict]: ...
    def take(self, runner: str, wait: float) -> Delivery | None: ...
    def heartbeat(self, runner: str) -> None: ...
    def running(self, delivery: Delivery, node: str) -> None: ...
    def progress(self, delivery: Delivery, **fields: Any) -> None: ...
    def succeed(self, delivery: Delivery, **fields: Any) -> None: ...
    def fail(self, delivery: Delivery, error: str, retry: bool, retries: int) -> str: ...
    def release(self, runner: str) -> None: ...
    def close(self) -> None: ...


def redact(url: str) -> str:
    """A broker URL fit to print: the password replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_url(url: str, where: str = "--queue-url") -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("redis", "rediss", "amqp", "amqps"):
        raise InputError(
            Problem(
                where,
                f"'{redact(url)}' is not a broker URL",
                "write redis://[:PASSWORD@]HOST:6379/0 or amqp://USER:PASSWORD@HOST:5672/",
            )
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise InputError(
            Problem(where, f"'{redact(url)}': {exc}", "write redis://HOST:PORT/DB or amqp://HOST:PORT/")
        ) from None
    if not parts.hostname:
        raise InputError(
            Problem(where, f"'{redact(url)}' has no host", "write redis://HOST:6379/0 or amqp://HOST:5672/")
        )
    return url


def connect(url: str | None = None, *, password: str | None = None, **options: Any) -> Broker:
    """The broker behind a redis:// or amqp:// URL (default $PIML_QUEUE_URL).

    `password` (default $PIML_QUEUE_PASSWORD) replaces the URL's, so that a pod can take it from a Secret.
    """
    url = url or os.environ.get("PIML_QUEUE_URL")
    if not url:
        raise InputError(
            Problem(
                "PIML_QUEUE_URL", "no broker given", "pass --queue-url redis://... or amqp://..., or set PIML_QUEUE_URL"
            )
        )
    check_url(url, "PIML_QUEUE_URL" if url == os.environ.get("PIML_QUEUE_URL") else "--queue-url")
    password = password if password is not None else os.environ.get("PIML_QUEUE_PASSWORD") or None
    if url.lower().startswith("redis"):
        from piml.queue.redis_broker import RedisBroker

        return RedisBroker(url, password=password, **options)
    from piml.queue.rabbitmq import RabbitBroker

    return RabbitBroker(url, password=password, **options)


def job_record(fields: dict[str, Any]) -> dict[str, Any]:
    """A request's state as `piml jobs --json` shows it: every field present, typed."""
    record = {name: fields.get(name) for name in JOB_FIELDS}
    # A record is written by runner pods and kept in the broker: one damaged field shows as unknown
    # (None), it does not break the listing of every other request.
    for name, kind in (("attempts", int), ("rows", int), ("seconds", float)):
        if record[name] not in (None, ""):
            try:
                record[name] = kind(record[name])
            except (TypeError, ValueError, OverflowError):
                record[name] = None
    for name in JOB_FIELDS:
        if name != "params" and record[name] is not None and not isinstance(record[name], (str, int, float)):
            record[name] = str(record[name])
    if isinstance(record["params"], str):
        try:
            record["params"] = json.loads(record["params"]) if record["params"] else {}
        except ValueError:
            pass
    for name, value in list(record.items()):
        if value == "":
            record[name] = None
    record["dead_letter"] = fields.get("dead_letter") in ("1", 1, True, "true")
    return record
