"""The checks as one table (people) or JSON (programs)."""

from __future__ import annotations

from piml.health.result import FAIL, PASS, SKIP, WARN, Result
from piml.output import console, print_json

STYLE = {PASS: "green", FAIL: "bold red", SKIP: "dim", WARN: "yellow"}


def as_json(results: list[Result], seconds: float) -> dict:
    return {
        "ok": not any(r.failed for r in results),
        "seconds": round(seconds, 3),
        "counts": counts(results),
        "checks": [r.as_dict() for r in results],
    }


def counts(results: list[Result]) -> dict[str, int]:
    return {status: sum(r.status == status for r in results) for status in (PASS, FAIL, SKIP, WARN)}


def show(results: list[Result], seconds: float, title: str = "piml check", json: bool = False) -> None:
    if json:
        print_json(as_json(results, seconds))
        return
    from rich.table import Table
    from rich.text import Text

    from piml.output import terminal_safe

    table = Table(title=title, title_justify="left")
    for column in ("group", "target", "check", "result", "seconds", "detail", "fix"):
        table.add_column(column, overflow="fold", justify="right" if column == "seconds" else "left")
    for r in results:  # remote text as Text: a bracket in an error message is not rich markup
        table.add_row(
            r.group,
            Text(r.target),
            Text(r.check),
            Text(r.status, style=STYLE[r.status]),
            f"{r.seconds:.2f}",
            Text(terminal_safe(r.detail)),
            Text(terminal_safe(r.fix)),
        )  # details quote logs and remote output
    console().print(table)
    n = counts(results)
    verdict = "[green]all checks pass[/]" if not n[FAIL] else f"[bold red]{n[FAIL]} failed[/]"
    warned = f", {n[WARN]} warn" if n[WARN] else ""
    console().print(f"{verdict}: {n[PASS]} pass, {n[FAIL]} fail, {n[SKIP]} skip{warned} in {seconds:.1f} s")
