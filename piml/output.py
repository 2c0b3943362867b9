"""Human and machine output: rich for people, JSON for programs. Errors go to stderr."""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import Any


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
    err_console().print(text, markup=False)


def warning_line(text: str) -> None:
    err_console().print("[yellow]warning:[/] ", end="")
    err_console().print(text, markup=False)
