"""Read ahead in a thread: disk and decompressor reads overlap with the work done on each chunk."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def read_ahead(chunks: Iterator[T], depth: int, name: str, join_timeout: float = 30.0) -> Iterator[T]:
    """Yield the items of `chunks`, produced in a thread up to `depth` items ahead.

    An exception in the thread is raised here. When the consumer stops (done, error, or the generator
    closed), the thread is told to stop and joined (bounded), so the caller may close what it reads from.
    """
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():  # never block forever: the consumer may be gone
            try:
                handoff.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def pump() -> None:
        try:
            for item in chunks:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            put(_Failed(exc))

    thread = threading.Thread(target=pump, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(join_timeout)
