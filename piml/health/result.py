"""One check's outcome, and `timed`, which runs a check body and turns what it raises into a result."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from piml.errors import PimlError

PASS, FAIL, SKIP = "pass", "fail", "skip"
WARN = "warn"  # wrong, but nothing the cluster depends on (a ray_external host asleep): no failure


class CheckFailed(Exception):
    """Raised by a check body: what is wrong (detail) and how to look further (fix)."""

    def __init__(self, detail: str, fix: str = ""):
        super().__init__(detail)
        self.detail, self.fix = detail, fix


class CheckSkipped(Exception):
    """Raised by a check body when the check does not apply (say why)."""


@dataclass(frozen=True)
class Result:
    group: str  # nodes | cluster | components | deep
    target: str  # a node name, "cluster", or a component (mlflow, dask, ray, queue, keda)
    check: str
    status: str  # pass | fail | skip | warn
    detail: str
    fix: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def as_dict(self) -> dict:
        return {
            "group": self.group,
            "target": self.target,
            "check": self.check,
            "status": self.status,
            "detail": self.detail,
            "fix": self.fix,
            "seconds": round(self.seconds, 3),
        }


def timed(group: str, target: str, check: str, body: Callable[[], str]) -> Result:
    """Run `body` (returns the pass detail) and time it. CheckFailed / CheckSkipped become fail / skip; any
    other exception is a failure named by its type and first line, never a traceback."""
    started = time.monotonic()
    try:
        detail = body()
        status, fix = PASS, ""
    except CheckFailed as exc:
        status, detail, fix = FAIL, exc.detail, exc.fix
    except CheckSkipped as exc:
        status, detail, fix = SKIP, str(exc), ""
    except PimlError as exc:  # e.g. the API unreachable: piml's own one-line problem
        problem = exc.problems[0]
        status, detail, fix = FAIL, f"{problem.where}: {problem.what}", problem.fix
    except Exception as exc:  # noqa: BLE001 - a check must report, never crash the others
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        status, detail, fix = FAIL, f"{type(exc).__name__}: {first}" if first else type(exc).__name__, ""
    return Result(group, target, check, status, detail or "", fix, time.monotonic() - started)
