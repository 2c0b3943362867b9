"""The request queue on Redis: a reliable queue with leases, retries and a dead-letter list.

Keys (PREFIX is `piml`):
    PREFIX:queue               list of pending messages: submit LPUSHes, runners take from the right (FIFO);
                               KEDA's redis trigger counts this list
    PREFIX:processing:RUNNER   what runner RUNNER is working on: BLMOVE moves a message here atomically,
                               so a request is never only in a runner's memory
    PREFIX:lease:RUNNER        exists while RUNNER is alive (a TTL key its heartbeat renews)
    PREFIX:runners             set of runners that may hold messages
    PREFIX:job:ID              hash: the request's state, times, node, attempts, run id, error (expires after
                               `state_ttl`, 7 days by default, counted from its last change)
    PREFIX:jobs                sorted set of request ids by submission time (for `piml jobs`)
    PREFIX:dead                dead-letter list: {"id", "message", "error", "attempts", "failed_at"}

A runner that dies (OOM-killed, node lost, kill -9) stops renewing its lease; the next runner or client that
finds a runner without a lease moves that runner's messages back to the queue (the reaper). A runner
restarted under the same id (a Kubernetes Job's next pod) takes its own unfinished message first.
Delivery is at least once: a runner that stalls past its lease may see its request run a second time.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from piml.errors import InputError, PimlError, Problem
from piml.queue.base import FAILED, QUEUED, SUCCEEDED, Delivery, job_record, now, redact, running_fields
from piml.queue.request import Request, id_of

DEFAULT_LEASE = 30  # seconds without a heartbeat before a runner counts as dead
DEFAULT_STATE_TTL = 7 * 24 * 3600
KEEP_JOBS = 10_000  # the index keeps the newest this many


class RedisBroker:
    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        prefix: str = "piml",
        lease_seconds: float = DEFAULT_LEASE,
        state_ttl: int = DEFAULT_STATE_TTL,
        socket_timeout: float = 10.0,
    ):
        import redis

        self.url = url
        self.lost = (redis.RedisError, OSError)
        self.lease_seconds = lease_seconds
        self.state_ttl = state_ttl
        self.prefix = prefix
        self.queue_key = f"{prefix}:queue"
        self.dead_key = f"{prefix}:dead"
        self.jobs_key = f"{prefix}:jobs"
        self.runners_key = f"{prefix}:runners"
        kwargs: dict[str, Any] = {
            "socket_connect_timeout": 5,
            "socket_timeout": socket_timeout,
            "health_check_interval": 30,
        }
        if password is not None:
            kwargs["password"] = password
        try:
            self.r = redis.Redis.from_url(url, **kwargs)
            self.r.ping()
        except redis.AuthenticationError:
            raise PimlError(
                Problem(
                    redact(url), "Redis refused the password", "check the password in the URL or $PIML_QUEUE_PASSWORD"
                ),
                1,
            ) from None
        except redis.RedisError as exc:
            raise PimlError(
                Problem(
                    redact(url), f"cannot reach Redis ({type(exc).__name__})", "check the address and that Redis runs"
                ),
                1,
            ) from None

    # -- keys ----------------------------------------------------------------------------------------
    def job_key(self, request_id: str) -> str:
        return f"{self.prefix}:job:{request_id}"

    def processing_key(self, runner: str) -> str:
        return f"{self.prefix}:processing:{runner}"

    def lease_key(self, runner: str) -> str:
        return f"{self.prefix}:lease:{runner}"

    # -- the client's side ---------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        key = self.job_key(request.id)
        if not self.r.hsetnx(key, "id", request.id):
            raise InputError(
                Problem("id", f"a request '{request.id}' exists already", "leave the id out for a fresh one")
            )
        fields = {
            "state": QUEUED,
            "model": request.model,
            "input": request.input,
            "output": request.output,
            "params": json.dumps(request.params),
            "submitted_at": now(),
            "attempts": 0,
        }
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, mapping=fields)
        pipe.expire(key, self.state_ttl)
        pipe.zadd(self.jobs_key, {request.id: time.time()})
        pipe.zremrangebyrank(self.jobs_key, 0, -KEEP_JOBS - 1)
        pipe.lpush(self.queue_key, request.to_json())
        pipe.execute()

    def get(self, request_id: str) -> dict | None:
        fields = self.r.hgetall(self.job_key(request_id))
        if not fields:
            return None
        return job_record(_decoded(fields))

    def jobs(self, limit: int = 50) -> list[dict]:
        self.reap()
        ids = [i.decode(errors="replace") for i in self.r.zrevrange(self.jobs_key, 0, max(0, limit - 1))]
        pipe = self.r.pipeline(transaction=False)
        for request_id in ids:
            pipe.hgetall(self.job_key(request_id))
        found = []
        for request_id, fields in zip(ids, pipe.execute(), strict=True):
            if fields:
                found.append(job_record(_decoded(fields)))
            else:  # expired: drop it from the index too
                self.r.zrem(self.jobs_key, request_id)
        return found

    def dead_letters(self, limit: int = 50) -> list[dict]:
        return [
            letter for letter in map(_json_object, self.r.lrange(self.dead_key, 0, limit - 1)) if letter is not None
        ]

    def queue_length(self) -> int:
        return int(self.r.llen(self.queue_key))

    # -- the runner's side ---------------------------------------------------------------------------
    def heartbeat(self, runner: str) -> None:
        self.r.set(self.lease_key(runner), now(), px=int(self.lease_seconds * 1000))

    def take(self, runner: str, wait: float = 0.0) -> Delivery | None:
        """Move one message to this runner's processing list and return it; None if none came within `wait` s.

        The runner's own unfinished message (a restarted pod with the same id) comes first, then messages
        of dead runners (moved back to the queue), then the queue.
        """
        self.heartbeat(runner)
        self.r.sadd(self.runners_key, runner)
        mine = self.processing_key(runner)
        raw = self.r.lindex(mine, -1)
        deadline = time.monotonic() + max(0.0, wait)
        while raw is None:
            self.reap(exclude=runner)
            left = deadline - time.monotonic()
            if left <= 0:
                raw = self.r.lmove(self.queue_key, mine, "RIGHT", "LEFT")
                break
            # Short blocking slices: the lease stays fresh and dead runners are noticed while waiting.
            raw = self.r.blmove(self.queue_key, mine, min(left, max(1.0, self.lease_seconds / 3)), "RIGHT", "LEFT")
            self.heartbeat(runner)
        if raw is None:
            return None
        request_id = id_of(raw)
        attempts = 1
        if request_id is not None:
            attempts = int(self.r.hincrby(self.job_key(request_id), "attempts", 1))
        return Delivery(raw=raw, id=request_id, attempts=attempts, runner=runner)

    def reap(self, exclude: str | None = None) -> int:
        """Return the messages of runners whose lease expired to the front of the queue; how many moved."""
        moved = 0
        for member in self.r.smembers(self.runners_key):
            runner = member.decode()
            if runner == exclude or self.r.exists(self.lease_key(runner)):
                continue
            source = self.processing_key(runner)
            while True:
                raw = self.r.lmove(source, self.queue_key, "RIGHT", "RIGHT")  # to the end taken next
                if raw is None:
                    break
                moved += 1
                request_id = id_of(raw)
                if request_id is not None:
                    self._update(
                        request_id, state=QUEUED, error=f"runner {runner} stopped while running it; queued again"
                    )
            if not self.r.exists(self.lease_key(runner)) and not self.r.llen(source):
                self.r.srem(self.runners_key, runner)
        return moved

    def _update(self, request_id: str, **fields: Any) -> None:
        key = self.job_key(request_id)
        values = {k: ("" if v is None else v) for k, v in fields.items()}
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, mapping=values)
        pipe.expire(key, self.state_ttl)
        pipe.execute()

    def running(self, delivery: Delivery, node: str) -> None:
        if delivery.id:
            self._update(delivery.id, **running_fields(delivery, node))

    def progress(self, delivery: Delivery, **fields: Any) -> None:
        if delivery.id:
            self._update(delivery.id, **fields)

    def _done(self, delivery: Delivery) -> None:
        self.r.lrem(self.processing_key(delivery.runner), 1, delivery.raw)

    def succeed(self, delivery: Delivery, **fields: Any) -> None:
        if delivery.id:
            self._update(delivery.id, state=SUCCEEDED, finished_at=now(), error=None, **fields)
        self._done(delivery)

    def fail(self, delivery: Delivery, error: str, retry: bool, retries: int) -> str:
        """Record a failed attempt. Queued again while attempts <= retries (and `retry`), else dead-lettered.

        Returns the request's new state (queued or failed).
        """
        request_id = delivery.id or "invalid-" + hashlib.sha256(delivery.raw).hexdigest()[:12]
        mine = self.processing_key(delivery.runner)
        if retry and delivery.attempts <= retries:
            self._update(request_id, state=QUEUED, error=error, finished_at=now())
            pipe = self.r.pipeline(transaction=True)
            pipe.lrem(mine, 1, delivery.raw)
            pipe.lpush(self.queue_key, delivery.raw)  # to the back: other requests go first
            pipe.execute()
            return QUEUED
        if delivery.id is None:  # no usable id: give the malformed message a record of its own
            self.r.hset(
                self.job_key(request_id),
                mapping={
                    "id": request_id,
                    "submitted_at": now(),
                    "attempts": delivery.attempts,
                    "model": "",
                    "input": "",
                },
            )
            self.r.zadd(self.jobs_key, {request_id: time.time()})
        self._update(request_id, state=FAILED, error=error, finished_at=now(), dead_letter=1)
        letter = json.dumps(
            {
                "id": request_id,
                "message": delivery.raw.decode("utf-8", "replace"),
                "error": error,
                "attempts": delivery.attempts,
                "failed_at": now(),
            }
        )
        pipe = self.r.pipeline(transaction=True)
        pipe.lrem(mine, 1, delivery.raw)
        pipe.lpush(self.dead_key, letter)
        pipe.execute()
        return FAILED

    def release(self, runner: str) -> None:
        """A runner leaving cleanly: drop its lease (its processing list is empty)."""
        if not self.r.llen(self.processing_key(runner)):
            self.r.delete(self.lease_key(runner))
            self.r.srem(self.runners_key, runner)

    def close(self) -> None:
        self.r.close()


def _decoded(fields: dict[bytes, bytes]) -> dict[str, str]:
    """A request's hash as text; bytes that are not UTF-8 (a damaged record) become U+FFFD, not an exception."""
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in fields.items()}


def _json_object(raw: bytes) -> dict | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
