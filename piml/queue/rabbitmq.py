"""The request queue on RabbitMQ (queue.kind: rabbitmq).

    piml.requests  durable queue of request messages (persistent); KEDA's rabbitmq trigger counts it.
                   Runners take one with manual ack (basic.get, so at most one unacknowledged message per
                   runner, like prefetch 1); a runner that dies loses its connection and RabbitMQ delivers
                   the message again (redelivered flag), so nothing is lost.
    piml.dead      durable dead-letter queue: {"id", "message", "error", "attempts", "failed_at"}
    piml.state     a stream (append-only, kept 7 days): one event per state change of a request
                   ({"id", "state", ...fields}). `piml jobs` replays it and keeps each request's latest fields.

Retries: a failed attempt is published again with header x-piml-attempts + 1 and the original acked; after
the last attempt it goes to piml.dead. A redelivery after a runner died counts as one more attempt (the
header cannot be rewritten on redelivery, so several deaths in a row count as one).
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from piml.errors import InputError, PimlError, Problem
from piml.queue.base import FAILED, QUEUED, RUNNING, SUCCEEDED, Delivery, job_record, now, redact, running_fields
from piml.queue.request import Request, id_of

QUEUE, DEAD, STATE = "piml.requests", "piml.dead", "piml.state"
ATTEMPTS = "x-piml-attempts"
DEAD_LIMIT = 100_000  # dead letters read for a backup: each is held unacknowledged until the read ends


def _waiting_request(request_id: str, record: dict[str, Any]) -> Request | None:
    """The request a folded record describes, when it was waiting or running (its `queued` event carries it)."""
    if record.get("state") not in (QUEUED, RUNNING) or not record.get("model") or not record.get("input"):
        return None
    try:
        params = json.loads(record.get("params") or "{}")
    except (ValueError, TypeError):
        params = {}
    output = record.get("output") or None
    fields = {"output": output} if output else {}
    return Request(id=request_id, model=str(record["model"]), input=str(record["input"]),
                   params=params if isinstance(params, dict) else {}, **fields)  # fmt: skip


def _with_password(url: str, password: str) -> str:
    from urllib.parse import quote, unquote, urlsplit, urlunsplit

    parts = urlsplit(url)
    user = unquote(parts.username or "guest")
    host = parts.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RabbitBroker:
    kind = "rabbitmq"
    lease_seconds = 30  # heartbeats are not needed: the connection is the lease

    def __init__(self, url: str, *, password: str | None = None, **_: Any):
        import pika

        self._pika = pika
        self.url = url
        self.lost = (pika.exceptions.AMQPError, OSError)
        # pika cannot parse a URL with a user but no password ("amqp://piml@host/", as the runner's and the
        # tunnel's URLs are): put a separately given password into the URL first.
        params = pika.URLParameters(_with_password(url, password) if password is not None else url)
        params.heartbeat = 0  # a long predict() runs no I/O loop; a lost connection is noticed by TCP instead
        params.blocked_connection_timeout = 30
        params.socket_timeout = 10
        params.connection_attempts = 1
        self._params = params
        try:
            self.conn = pika.BlockingConnection(params)
        except pika.exceptions.ProbableAuthenticationError:
            raise PimlError(
                Problem(redact(url), "RabbitMQ refused the user or password", "check the URL or $PIML_QUEUE_PASSWORD"),
                1,
            ) from None
        except pika.exceptions.AMQPError as exc:
            raise PimlError(
                Problem(
                    redact(url),
                    f"cannot reach RabbitMQ ({type(exc).__name__})",
                    "check the address and that RabbitMQ runs",
                ),
                1,
            ) from None
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        self.ch.queue_declare(QUEUE, durable=True)
        self.ch.queue_declare(DEAD, durable=True)
        self.ch.queue_declare(
            STATE,
            durable=True,
            arguments={"x-queue-type": "stream", "x-max-age": "7D", "x-max-length-bytes": 256 * 1024 * 1024},
        )

    def _publish(self, queue: str, body: bytes, headers: dict | None = None) -> None:
        props = self._pika.BasicProperties(delivery_mode=2, headers=headers or {}, content_type="application/json")
        self.ch.basic_publish("", queue, body, props, mandatory=True)

    def _event(self, request_id: str, **fields: Any) -> None:
        event = {"id": request_id, "at": time.time(), **{k: ("" if v is None else v) for k, v in fields.items()}}
        self._publish(STATE, json.dumps(event).encode())

    def _events(self) -> list[dict]:
        """Every state event in the stream, oldest first.

        A stream does not say how long it is, so a marker event is appended first and the stream read up to it.
        Events written after the marker are often in flight when the reader stops; pika rejects those when
        it cancels the consumer, and a stream answers a reject by closing the connection (auto-ack, which
        would avoid the reject, is not allowed on streams). So the stream is read on a connection of its
        own, and an error while closing it is of no account.
        """
        marker = f"sync-{time.time_ns()}-{id(self)}"
        self._publish(STATE, json.dumps({"sync": marker}).encode())
        reader = self._pika.BlockingConnection(self._params)
        try:
            channel = reader.channel()
            channel.basic_qos(prefetch_count=500)
            events: list[dict] = []
            for method, _, body in channel.consume(
                STATE, arguments={"x-stream-offset": "first"}, inactivity_timeout=10.0
            ):
                if method is None:  # bounded: the marker is there, so this only happens if the stream broke
                    break
                channel.basic_ack(method.delivery_tag, multiple=True)
                try:
                    event = json.loads(body)
                except ValueError:
                    continue
                if not isinstance(event, dict):  # a damaged or foreign message: skip it, keep the rest
                    continue
                if event.get("sync") == marker:
                    break
                if "id" in event:
                    events.append(event)
            return events
        finally:
            try:
                reader.close()
            except self._pika.exceptions.AMQPError:
                pass

    def _fold(self) -> dict[str, dict]:
        jobs: dict[str, dict] = {}
        for event in self._events():
            request_id = str(event.get("id", ""))
            record = jobs.setdefault(request_id, {"id": request_id})
            record.update({k: v for k, v in event.items() if k != "at"})
        return jobs

    # -- the client's side ---------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        if self.get(request.id) is not None:
            raise InputError(
                Problem("id", f"a request '{request.id}' exists already", "leave the id out for a fresh one")
            )
        self._event(
            request.id,
            state=QUEUED,
            model=request.model,
            input=request.input,
            output=request.output,
            params=json.dumps(request.params),
            submitted_at=now(),
            attempts=0,
        )
        self._publish(QUEUE, request.to_json().encode(), {ATTEMPTS: 0})

    def get(self, request_id: str) -> dict | None:
        record = self._fold().get(request_id)
        return job_record(record) if record else None

    def jobs(self, limit: int = 50) -> list[dict]:
        records = sorted(self._fold().values(), key=lambda r: str(r.get("submitted_at", "")), reverse=True)
        return [job_record(r) for r in records[:limit]]

    def dead_letters(self, limit: int = 50) -> list[dict]:
        channel = self.conn.channel()  # read without taking: closing the channel puts them back
        letters = []
        try:
            for _ in range(limit):
                method, _, body = channel.basic_get(DEAD, auto_ack=False)
                if method is None:
                    break
                try:
                    letter = json.loads(body)
                except ValueError:
                    continue
                if isinstance(letter, dict):
                    letters.append(letter)
        finally:
            channel.close()
        return letters

    def queue_length(self) -> int:
        return int(self.ch.queue_declare(QUEUE, passive=True).method.message_count)

    # -- the runner's side ---------------------------------------------------------------------------
    def take(self, runner: str, wait: float = 0.0) -> Delivery | None:
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            method, props, body = self.ch.basic_get(QUEUE, auto_ack=False)
            if method is not None:
                break
            if time.monotonic() >= deadline:
                return None
            self.conn.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
        headers = props.headers or {}
        attempts = int(headers.get(ATTEMPTS, 0) or 0) + 1 + (1 if method.redelivered else 0)
        request_id = id_of(body)
        if request_id is not None:
            self._event(request_id, attempts=attempts)
        return Delivery(raw=body, id=request_id, attempts=attempts, runner=runner, tag=method.delivery_tag)

    def heartbeat(self, runner: str) -> None:
        """Nothing to do: RabbitMQ notices a dead runner by its closed connection (pika is not thread-safe)."""

    def running(self, delivery: Delivery, node: str) -> None:
        if delivery.id:
            self._event(delivery.id, **running_fields(delivery, node))

    def progress(self, delivery: Delivery, **fields: Any) -> None:
        if delivery.id:
            self._event(delivery.id, **fields)

    def succeed(self, delivery: Delivery, **fields: Any) -> None:
        if delivery.id:
            self._event(delivery.id, state=SUCCEEDED, finished_at=now(), error=None, **fields)
        self.ch.basic_ack(delivery.tag)

    def fail(self, delivery: Delivery, error: str, retry: bool, retries: int) -> str:
        request_id = delivery.id or "invalid-" + hashlib.sha256(delivery.raw).hexdigest()[:12]
        if retry and delivery.attempts <= retries:
            self._event(request_id, state=QUEUED, error=error, finished_at=now())
            self._publish(QUEUE, delivery.raw, {ATTEMPTS: delivery.attempts})
            self.ch.basic_ack(delivery.tag)
            return QUEUED
        if delivery.id is None:
            self._event(request_id, submitted_at=now(), model="", input="", attempts=delivery.attempts)
        self._event(request_id, state=FAILED, error=error, finished_at=now(), dead_letter=1)
        letter = {
            "id": request_id,
            "message": delivery.raw.decode("utf-8", "replace"),
            "error": error,
            "attempts": delivery.attempts,
            "failed_at": now(),
        }
        self._publish(DEAD, json.dumps(letter).encode())
        self.ch.basic_ack(delivery.tag)
        return FAILED

    def release(self, runner: str) -> None:
        """Nothing held: unacknowledged messages go back when the connection closes."""

    # -- backup and restore (piml/backup) --------------------------------------------------------------
    def export_state(self) -> dict[str, list[dict]]:
        """The queue's state, read without taking anything: every event of the state stream (oldest first) and
        every dead letter. The requests still waiting are in it as their events: their `queued` event holds the
        whole request, so they need not be read from piml.requests (a read there would mark them redelivered,
        which counts as an attempt)."""
        return {"events": self._events(), "dead": self.dead_letters(limit=DEAD_LIMIT)}

    def import_state(self, state: dict[str, Any]) -> dict[str, int]:
        """Merge an exported state into this broker: the requests it does not know come back with their history,
        those that were waiting or running queued again (a running one is run again: the backup cannot say how
        far it got), and the dead letters it lacks. What it knows stays as it is, so a second import changes
        nothing. Returns how many requests, queued requests and dead letters came back."""
        known = set(self._fold())
        history: dict[str, list[dict]] = {}
        for event in state.get("events", []):
            request_id = str(event.get("id") or "") if isinstance(event, dict) else ""
            if request_id and request_id not in known:
                history.setdefault(request_id, []).append(event)
        queued = 0
        for request_id, events in history.items():
            for event in events:
                self._publish(STATE, json.dumps(event).encode())
            record: dict[str, Any] = {}
            for event in events:
                record.update(event)
            request = _waiting_request(request_id, record)
            if request is not None:
                if record.get("state") != QUEUED:
                    self._event(request_id, state=QUEUED)
                attempts = record.get("attempts")
                self._publish(
                    QUEUE, request.to_json().encode(), {ATTEMPTS: attempts if isinstance(attempts, int) else 0}
                )
                queued += 1
        there = {str(letter.get("id")) for letter in self.dead_letters(limit=DEAD_LIMIT)}
        letters = [
            letter
            for letter in state.get("dead", [])
            if isinstance(letter, dict) and str(letter.get("id")) not in there
        ]
        for letter in letters:
            self._publish(DEAD, json.dumps(letter).encode())
        return {"requests": len(history), "queued": queued, "dead letters": len(letters)}

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - closing anyway
            pass
