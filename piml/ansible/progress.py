"""Progress of playbook runs: one line per node and stage, from ansible-runner events.

On a terminal a rich live table (spinner, current task, counts); otherwise plain lines: one when a node
fails or cannot be reached, and one per node when the stage ends. Never shows task output (it may hold
secrets): only task names, counts and failure messages.
"""

from __future__ import annotations

import threading
import time

from piml.output import console

SPINNER = "|/-\\"
SYMBOL = {
    "running": "[cyan]…[/]",
    "ok": "[green]ok[/]",
    "changed": "[yellow]changed[/]",
    "failed": "[bold red]failed[/]",
    "unreachable": "[bold red]unreachable[/]",
}


class _Row:
    def __init__(self, stage: str, node: str):
        self.stage, self.node = stage, node
        self.task = "waiting"
        self.ok = self.changed = self.failed = 0
        self.unreachable = False
        self.done = False
        self.reported_failure = False

    @property
    def status(self) -> str:
        if self.unreachable:
            return "unreachable"
        if self.failed:
            return "failed"
        if not self.done:
            return "running"
        return "changed" if self.changed else "ok"


class StageProgress:
    """Use as a context manager around one playbook run; pass `on_event` to run_playbook."""

    def __init__(self, stage: str, nodes: list[str], enabled: bool = True):
        self.stage = stage
        self.rows = {n: _Row(stage, n) for n in nodes}
        self.enabled = enabled
        self.live = None
        self.tty = console().is_terminal
        self._lock = threading.Lock()
        self._started = time.monotonic()

    def __enter__(self) -> StageProgress:
        if self.enabled and self.tty:
            from rich.live import Live

            self.live = Live(self._render(), console=console(), refresh_per_second=8, transient=False)
            self.live.__enter__()
        elif self.enabled:
            console().print(f"{self.stage}: running on {', '.join(self.rows) or 'no nodes'}", markup=False)
        return self

    def __exit__(self, *exc) -> None:
        for row in self.rows.values():
            row.done = True
        if self.live is not None:
            self.live.update(self._render())
            self.live.__exit__(*exc)
        elif self.enabled:
            for row in self.rows.values():
                console().print(
                    f"{self.stage}  {row.node}  {row.status}  (ok {row.ok}, changed {row.changed}, failed {row.failed})",
                    markup=False,
                )

    def on_event(self, event: dict) -> None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host")
        with self._lock:
            row = self.rows.get(host) if host else None
            if row is None:
                return
            if kind == "runner_on_start":
                row.task = data.get("task") or row.task
            elif kind == "runner_retry":
                row.task = f"{data.get('task')} (waiting, try {(data.get('res') or {}).get('attempts', '?')})"
            elif kind == "runner_on_ok":
                row.ok += 1
                row.changed += bool((data.get("res") or {}).get("changed"))
            elif kind == "runner_on_failed" and not data.get("ignore_errors"):
                row.failed += 1
                self._plain_failure(row, data)
            elif kind == "runner_on_unreachable":
                row.unreachable = True
                self._plain_failure(row, data)
            elif kind == "runner_on_rescued" or (kind == "runner_on_ok" and row.failed):
                pass
            if self.live is not None:
                self.live.update(self._render())

    def _plain_failure(self, row: _Row, data: dict) -> None:
        """Rescued failures are not final; the summary reports what is. Plain mode notes the first one."""
        if self.live is None and self.enabled and not row.reported_failure and not data.get("ignore_errors"):
            row.reported_failure = True
            console().print(f"{self.stage}  {row.node}  trouble in task: {data.get('task')}", markup=False)

    def _render(self):
        from rich.table import Table

        table = Table.grid(padding=(0, 2))
        for _ in range(4):
            table.add_column()
        elapsed = time.monotonic() - self._started
        for row in self.rows.values():
            status = row.status
            spin = SPINNER[int(elapsed * 4) % len(SPINNER)]
            symbol = SYMBOL[status] if status != "running" else f"[cyan]{spin}[/]"
            counts = f"ok {row.ok}  changed {row.changed}" + (f"  failed {row.failed}" if row.failed else "")
            table.add_row(
                f"[bold]{self.stage}[/]",
                row.node,
                symbol,
                f"[dim]{counts}[/]  {_escape(row.task) if not row.done else ''}",
            )
        return table


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
