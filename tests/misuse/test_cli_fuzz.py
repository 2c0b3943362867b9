"""The command line, fuzzed (issue 16): any argv ends as help, a run, or one usage error; never a traceback or an
"internal error". Runs `piml.entry.main` in-process, as the `piml` script does.

1. Parsing: every command's run function is replaced by a recorder, so only typer's parsing and piml's
   option types run; any argument list parses or is refused with exit 2.
2. The cheap commands for real (plan, render, inventory, jobs, submit) on a project whose nodes are loopback
   tripwires and which has no cluster: exit 0, 1 or 2, the project's files unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import signal
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piml import entry
from tests.fuzzing import examples

RUN_FUNCTIONS = {
    "piml.commands.init": "run_init",
    "piml.commands.inventory": ("show", "check"),
    "piml.commands.flash": "run",
    "piml.commands.up": "run_up",
    "piml.commands.status": "run_status",
    "piml.commands.check": "run_check",
    "piml.commands.teardown": "run_teardown",
    "piml.commands.plan": "run_plan",
    "piml.commands.render": "run_render",
    "piml.commands.submit": "run_submit",
    "piml.commands.jobs": "run_jobs",
}
COMMANDS = [
    ["init"],
    ["inventory", "show"],
    ["inventory", "check"],
    ["inventory"],
    ["flash"],
    ["up"],
    ["status"],
    ["check"],
    ["teardown"],
    ["plan"],
    ["render"],
    ["submit"],
    ["jobs"],
    [],
    ["nosuch"],
]
OPTIONS = [
    "--node",
    "-n",
    "--user",
    "-u",
    "--ssh-key",
    "--model",
    "--memory-gb",
    "--force",
    "-C",
    "--project",
    "-i",
    "--inventory",
    "--json",
    "--yes",
    "-y",
    "--list",
    "--sha256",
    "--unmount",
    "--allow-fixed",
    "--no-verify",
    "--output",
    "-o",
    "--all",
    "--cm4",
    "--only",
    "--from",
    "--until",
    "--limit",
    "-l",
    "--accept-new-host-keys",
    "--dry-run",
    "--no-merge",
    "--watch",
    "-w",
    "--interval",
    "--deep",
    "--k3s",
    "--purge",
    "--reach",
    "--out",
    "--include-secrets",
    "--param",
    "-p",
    "--id",
    "--wait",
    "--timeout",
    "--queue-url",
    "--version",
    "--help",
    "-h",
    "--",
    "-",
    "--=",
    "---x",
]
ODD_VALUES = [
    "",
    " ",
    ",",
    "0",
    "-1",
    "-5",
    "1e309",
    "nan",
    "inf",
    "-inf",
    "0x10",
    "9" * 40,
    "1.5",
    "a=b",
    "=",
    "==",
    "pi1",
    "pi1,pi2",
    "server",
    "/",
    "/dev/null",
    "/proc/self/mem",
    "../..",
    "~",
    "\x00",
    "\x1b[2J",
    "é",
    "\ud800",
    "redis://127.0.0.1:1/0",
    "amqp://u:p@127.0.0.1:1/",
    "redis://127.0.0.1:99999/0",
    "models:/a/1",
    "runs:/x/y",
]

tokens = st.one_of(st.sampled_from(OPTIONS), st.sampled_from(ODD_VALUES), st.text(max_size=12))
argvs = st.builds(lambda command, rest: command + rest, st.sampled_from(COMMANDS), st.lists(tokens, max_size=8))


def run_piml(argv: list[str]) -> tuple[int, str, str]:
    """entry.main with this argv, in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved, sigint = sys.argv, signal.getsignal(signal.SIGINT)
    sys.argv = ["piml", *argv]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            entry.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        # main() ignores Ctrl-C once the command is over; left so, every process pytest starts later would
        # inherit the ignored SIGINT (and the Ctrl-C tests would wait for nothing)
        sys.argv = saved
        signal.signal(signal.SIGINT, sigint)
    return code, out.getvalue(), err.getvalue()


def no_crash(code: int, out: str, err: str, allowed: tuple[int, ...]) -> None:
    said = out + err
    assert "Traceback" not in said and "internal error" not in said, said[-3000:]
    assert code in allowed, f"exit {code}: {said[-3000:]}"


@pytest.fixture
def recorded(monkeypatch):
    """Every command's run function replaced by one that only records that parsing got through."""
    import importlib

    calls = []
    for module_name, names in RUN_FUNCTIONS.items():
        module = importlib.import_module(module_name)
        for name in (names,) if isinstance(names, str) else names:
            monkeypatch.setattr(module, name, lambda *args, _name=name, **kwargs: calls.append(_name))
    return calls


@settings(
    max_examples=examples(400),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(argv=argvs)
def test_any_argv_parses_or_is_a_usage_error(recorded, argv):
    code, out, err = run_piml(argv)
    no_crash(code, out, err, (0, 2))
    if code == 2:
        assert err.strip(), f"exit 2 without a word: {argv!r}"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project with two loopback nodes on the discard port (nothing listens: SSH fails at once) and no cluster."""
    root = tmp_path_factory.mktemp("fuzz") / "lab"
    code, out, err = run_piml(
        ["init", str(root), "--node", "pi1=127.0.0.1", "--node", "pi2=127.0.0.2", "--model", "pi5", "--memory-gb", "8"]
    )
    assert code == 0, out + err
    hosts = root / "inventory" / "hosts.yml"
    hosts.write_text(
        hosts.read_text()
        .replace("ansible_host: 127.0.0.1", "ansible_host: 127.0.0.1, ansible_port: 9")
        .replace("ansible_host: 127.0.0.2", "ansible_host: 127.0.0.2, ansible_port: 9")
    )
    return root


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("cwd")


def fingerprint(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


REAL = [["plan"], ["plan", "--json"], ["render"], ["inventory", "show"], ["inventory", "check"], ["jobs"], ["submit"]]
real_tokens = st.one_of(
    st.sampled_from(
        [
            "--json",
            "--include-secrets",
            "-n",
            "--limit",
            "--param",
            "-p",
            "--id",
            "--wait",
            "--timeout",
            "--output",
            "--queue-url",
            "--out",
            "-o",
            "-i",
        ]
    ),
    st.sampled_from([v for v in ODD_VALUES if "://" not in v or "127.0.0.1" in v]),
    st.text(max_size=12),
)


@settings(
    max_examples=examples(150),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(command=st.sampled_from(REAL), rest=st.lists(real_tokens, max_size=6))
def test_cheap_commands_for_real_never_crash_and_change_nothing(project, scratch, command, rest):
    if "--queue-url" in rest:  # only loopback brokers: the last token after it must be one
        index = rest.index("--queue-url")
        rest = rest[: index + 1] + ["redis://127.0.0.1:1/0"] + rest[index + 2 :]
    before = fingerprint(project)
    with contextlib.chdir(scratch):  # render --out writes relative paths here
        code, out, err = run_piml([*command, "-C", str(project), *rest])
    no_crash(code, out, err, (0, 1, 2))
    assert fingerprint(project) == before
