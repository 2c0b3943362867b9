"""Human and machine output: rich for people, JSON for programs. Errors go to stderr."""

from __future__ import annotations

import json
import re
import sys
from functools import cache
from typing import Any

# Escape sequences (CSI, OSC, other ESC forms) and the remaining C0/C1 control characters, except
# newline and tab. Text from outside piml (a job's error, a pod's log, a broker's record) passes
# through `terminal_safe` before it is printed, so it cannot move the cursor, retitle the terminal,
# hide what follows or hand the terminal a hyperlink.
_ESCAPES = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-Z\\-_]?|\x9b[0-?]*[ -/]*[@-~]"
)
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """`text` with escape sequences removed and other control characters shown as `?`."""
    return _CONTROLS.sub("?", _ESCAPES.sub("", text))


def _width(stream) -> int | None:
    """Rich assumes 80 columns when output is not a terminal; logs and pipes read better wider."""
    import os

    if stream.isatty() or os.environ.get("COLUMNS"):
        return None
    return 120


@cache
def console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, width=_width(sys.stdout))


@cache
def err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True, width=_width(sys.stderr))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def error_line(text: str) -> None:
    """One problem, on stderr, without rich markup interpretation (user text may contain brackets)."""
    err_console().print("[bold red]error:[/] ", end="")
    err_console().print(terminal_safe(text), markup=False)


def warning_line(text: str) -> None:
    err_console().print("[yellow]warning:[/] ", end="")
    err_console().print(terminal_safe(text), markup=False)


class ByteProgress:
    """A progress bar of bytes (done, throughput, time left) on stderr when it is a terminal; nothing otherwise.
    Call it with the bytes done so far; `close()` at the end."""

    def __init__(self, label: str, total: int | None):
        self.bar = None
        if err_console().is_terminal:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=err_console(),
                transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task(label, total=total)

    def __call__(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
