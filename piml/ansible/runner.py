"""Run one of piml's playbooks with ansible-runner, against the project's own inventory.

Each run gets a private directory (0700, removed afterwards) holding the extra variables (0600, passed
as `-e @file`, so a secret such as the k3s token is never on a command line), the runner's artifacts and
Ansible's temp files. Ansible's SSH honours the same host key policy as piml's own SSH: only
`.piml/known_hosts`, strictly. Runner events feed a progress display and per-host counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from piml.fsutil import write_atomic

if TYPE_CHECKING:
    from piml.project import Cluster

SSH_CONNECT_TIMEOUT = 10  # seconds; a node that is gone costs this, not minutes
PLAYBOOK_TIMEOUT = 3600  # the whole run; every wait inside is bounded much tighter
# In a --limit these name groups (Ansible's own, and the inventory layout piml reads), not one host
ANSIBLE_GROUP_NAMES = frozenset({"all", "ungrouped", "k3s_cluster", "server", "agent", "ray_external"})


@dataclass
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0

    @property
    def status(self) -> str:
        return "unreachable" if self.unreachable else "failed" if self.failed else "changed" if self.changed else "ok"

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "changed": self.changed,
            "failed": self.failed,
            "unreachable": self.unreachable,
            "skipped": self.skipped,
            "status": self.status,
        }


@dataclass
class PlaybookResult:
    playbook: str
    hosts: dict[str, HostStats] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)  # host -> what went wrong (last failure)
    rc: int = 0
    seconds: float = 0.0
    error: str = ""  # the run itself failed (ansible missing, syntax error, timeout)
    not_run: list[str] = field(default_factory=list)  # hosts Ansible never got to (an earlier play failed)
    unreachable_seen: set[str] = field(default_factory=set)

    @property
    def failed_hosts(self) -> list[str]:
        return [h for h, s in self.hosts.items() if s.failed or s.unreachable]

    @property
    def ok(self) -> bool:
        return not self.error and not self.failed_hosts

    def totals(self) -> HostStats:
        total = HostStats()
        for stats in self.hosts.values():
            for name in ("ok", "changed", "failed", "unreachable", "skipped", "rescued"):
                setattr(total, name, getattr(total, name) + getattr(stats, name))
        return total


def ssh_args(known_hosts: Path, control_dir: Path) -> str:
    """ssh options for Ansible: the project's known_hosts only, strictly; connections reused; dead links
    noticed within seconds (ServerAlive) instead of hanging."""
    return " ".join(
        [
            "-o ControlMaster=auto",
            "-o ControlPersist=60s",
            f"-o ControlPath={control_dir}/%C",
            f"-o UserKnownHostsFile={_quote(str(known_hosts))}",
            "-o GlobalKnownHostsFile=/dev/null",
            "-o StrictHostKeyChecking=yes",
            "-o BatchMode=yes",
            "-o ServerAliveInterval=5",
            "-o ServerAliveCountMax=3",
            f"-o ConnectTimeout={SSH_CONNECT_TIMEOUT}",
        ]
    )


def _quote(text: str) -> str:
    return text if all(c.isalnum() or c in "/._-+:@" for c in text) else "'" + text.replace("'", "'\\''") + "'"


def control_dir(cluster: Cluster) -> Path:
    """A short directory for ssh control sockets (socket paths are limited to ~100 bytes)."""
    digest = hashlib.sha256(str(cluster.paths.root.resolve()).encode()).hexdigest()[:10]
    path = Path(tempfile.gettempdir()) / f"piml-ssh-{os.getuid()}-{digest}"
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def ansible_settings(cluster: Cluster, host_count: int) -> dict[str, str]:
    """The environment piml runs Ansible with (also what `piml up --print-command` prints)."""
    return {
        "ANSIBLE_SSH_ARGS": ssh_args(cluster.paths.known_hosts, control_dir(cluster)),
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_FORKS": str(max(5, min(50, host_count))),
        "ANSIBLE_TIMEOUT": str(SSH_CONNECT_TIMEOUT),
        "ANSIBLE_SSH_RETRIES": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_PYTHON_INTERPRETER": "auto_silent",
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_GATHERING": "explicit",
    }


def run_playbook(
    cluster: Cluster, playbook: str, hosts: list[str], extravars: dict, on_event: Callable[[dict], None] | None = None
) -> PlaybookResult:
    """Run playbooks/<playbook> limited to `hosts`; return per-host counts and failure messages."""
    import ansible_runner

    from piml.paths import playbooks_dir

    book = playbooks_dir() / playbook
    result = PlaybookResult(playbook)
    if not hosts:  # to Ansible an empty --limit means every host: no hosts is no run (callers select first)
        result.error = f"{playbook}: no hosts to run it on (not run: an empty limit would mean every host)"
        return result
    patterns = [h for h in hosts if h in ANSIBLE_GROUP_NAMES or any(c in h for c in "*?[]!&,~ ")]
    if patterns:  # the limit must name exactly these hosts: a group name or pattern would widen it
        result.error = (
            f"{playbook}: not run: host name(s) {', '.join(map(repr, patterns))} would be read by Ansible as a "
            "group or pattern, not one host; rename the node in the inventory"
        )
        return result
    started = time.monotonic()
    private = Path(tempfile.mkdtemp(prefix="piml-ansible-"))
    os.chmod(private, 0o700)
    try:
        (private / "env").mkdir(mode=0o700)
        write_atomic(private / "env" / "extravars", json.dumps(extravars), mode=0o600)
        (private / "tmp").mkdir(mode=0o700)
        env = {
            "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
            **ansible_settings(cluster, len(hosts)),
            "ANSIBLE_LOCAL_TEMP": str(private / "tmp"),
        }
        failures: dict[str, str] = {}

        def handle(event: dict) -> bool:
            _collect(event, result, failures)
            if on_event is not None:
                on_event(event)
            return False  # do not keep the event in memory; the artifacts dir is private and removed

        try:
            runner = ansible_runner.run(
                private_data_dir=str(private),
                project_dir=str(book.parent),
                playbook=str(book),
                inventory=str(cluster.paths.inventory.resolve()),
                limit=",".join(hosts),
                envvars=env,
                event_handler=handle,
                quiet=True,
                timeout=PLAYBOOK_TIMEOUT,
                rotate_artifacts=1,
            )
        except Exception as exc:  # noqa: BLE001 - ansible-runner raises many kinds; one clear line
            result.error = f"ansible-runner could not run {playbook}: {exc}"
            return result
        result.rc = runner.rc
        if runner.status == "timeout":
            result.error = f"{playbook} did not finish within {PLAYBOOK_TIMEOUT} s"
        elif runner.rc != 0 and not result.hosts:
            result.error = _runner_error(runner, playbook)
        for host in result.unreachable_seen:
            stats = result.hosts.setdefault(host, HostStats())
            stats.unreachable = max(stats.unreachable, 1)
        for host in hosts:
            if host not in result.hosts:
                result.hosts[host] = HostStats()
                result.not_run.append(host)
        for host in result.failed_hosts:
            result.failures[host] = failures.get(host) or "failed (no message from Ansible)"
        return result
    finally:
        result.seconds = time.monotonic() - started
        shutil.rmtree(private, ignore_errors=True)


def _runner_error(runner, playbook: str) -> str:
    """Why a run ended before any host ran: the tail of Ansible's own output (never holds extravars)."""
    try:
        text = runner.stdout.read()
    except Exception:  # noqa: BLE001
        text = ""
    lines = [line for line in text.strip().splitlines() if line.strip()][-6:]
    return f"{playbook}: ansible-playbook exited {runner.rc}: " + " | ".join(lines)


def _collect(event: dict, result: PlaybookResult, failures: dict[str, str]) -> None:
    kind = event.get("event")
    data = event.get("event_data") or {}
    host = data.get("host")
    if kind == "runner_on_failed" and host and not data.get("ignore_errors"):
        failures[host] = failure_message(data.get("res") or {}, data.get("task") or "")
    elif kind == "runner_on_unreachable" and host:
        failures[host] = "unreachable: " + _one_line((data.get("res") or {}).get("msg") or "cannot connect")
        result.unreachable_seen.add(host)  # counted here too: `ignore_unreachable` keeps it out of the stats
    elif kind == "playbook_on_stats":
        for name, key in (
            ("ok", "ok"),
            ("changed", "changed"),
            ("failed", "failures"),
            ("unreachable", "dark"),
            ("skipped", "skipped"),
            ("rescued", "rescued"),
        ):
            for h, count in (data.get(key) or {}).items():
                setattr(result.hosts.setdefault(h, HostStats()), name, count)


def failure_message(res: dict, task: str = "") -> str:
    if res.get("censored"):
        return (
            f"task '{task}' failed; its output is hidden because it handles the k3s token "
            "(run the playbook yourself with -e @vars.yml and ANSIBLE_DEBUG to see it)"
        )
    msg = res.get("msg") or ""
    if isinstance(msg, list):
        msg = " ".join(str(m) for m in msg)
    stderr = (res.get("stderr") or "").strip()
    if stderr and stderr not in msg:
        tail = "\n".join(stderr.splitlines()[-8:])
        msg = f"{msg} (rc {res.get('rc')}): {tail}" if msg else f"exit {res.get('rc')}: {tail}"
    msg = str(msg).strip() or "failed"
    # Our own `fail` tasks say everything already; for Ansible's messages, name the task.
    return msg if task.startswith("Say ") or not task else f"{task}: {msg}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
