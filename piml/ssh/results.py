"""What happened on each host: ok with a value, or failed with a kind, a reason and a fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# Failure kinds, worst first: they decide what a user must fix.
UNREACHABLE = "unreachable"
HOST_KEY = "host-key"
AUTH = "auth"
SUDO = "sudo"
TIMEOUT = "timeout"
COMMAND = "command"


@dataclass(frozen=True)
class Failure:
    """Why a host gave no value: `kind` (one of the kinds above), the reason naming the host, and the fix."""

    kind: str
    reason: str
    fix: str

    def __str__(self) -> str:
        return f"{self.reason}; {self.fix}"


@dataclass(frozen=True)
class HostResult(Generic[T]):
    node: str
    value: T | None = None  # with a TIMEOUT failure, what the command printed before it was cut (or None)
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass(frozen=True)
class CommandOutput:
    exit_code: int
    stdout: str
    stderr: str
    seconds: float
    started: float  # wall clock (time.time()) when the command was sent
