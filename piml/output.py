"""Human and machine output: rich for people, JSON for programs. Errors go to stderr."""

from __future__ import annotations

import json
import sys
from functools import cache
from typing import Any


@cache
def console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


@cache
def err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def error_line(text: str) -> None:
    """One problem, on stderr, without rich markup interpretation (user text may contain brackets)."""
    err_console().print(f"[bold red]error:[/] ", end="")
    err_console().print(text, markup=False)


def warning_line(text: str) -> None:
    err_console().print("[yellow]warning:[/] ", end="")
    err_console().print(text, markup=False)
