"""The `piml` entry point: the one place that turns every error into one line and an exit code.

It imports nothing heavy itself, so that Ctrl-C while the command line loads (typer, rich) is an
"interrupted" line too, not a traceback.
"""

from __future__ import annotations

import errno
import os
import signal
import sys

# Errors about a path the user named (or the project's files): their input, exit 2.
_PATH_ERRNOS = {
    errno.ENOENT,
    errno.EACCES,
    errno.EPERM,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.ENAMETOOLONG,
    errno.EROFS,
    errno.ELOOP,
    errno.EEXIST,
    errno.EINVAL,
}
# Libraries whose errors mean "the other end failed": a broker, the API server, a node. Exit 1.
_REMOTE = {
    "redis": ("the Redis broker", "check that it runs and the address is right (`piml check`)"),
    "pika": ("the RabbitMQ broker", "check that it runs and the address is right (`piml check`)"),
    "kubernetes": ("the Kubernetes API", "check that the cluster is up: `piml status`"),
    "urllib3": ("the Kubernetes API", "check that the cluster is up: `piml status`"),
    "websocket": ("the Kubernetes API", "check that the cluster is up: `piml status`"),
    "paramiko": ("SSH", "check that the node is up and its SSH server answers: `piml status`"),
}


def expected_problem(exc: BaseException):
    """A PimlError for an error that a user's environment causes (a file, the network, a broker), else None."""
    from piml.errors import EXIT_FAILED, EXIT_USAGE, PimlError, Problem, first_line

    top = type(exc).__module__.split(".")[0]
    if top in _REMOTE:
        where, fix = _REMOTE[top]
        return PimlError(Problem(where, f"{type(exc).__name__}: {first_line(exc)}", fix), EXIT_FAILED)
    if isinstance(exc, ValueError) and "null byte" in str(exc):  # os.* on a path typed with a NUL in it
        return PimlError(
            Problem("arguments", "a path contains a NUL character", "type the path again without it"), EXIT_USAGE
        )
    if top == "yaml":
        return PimlError(Problem("YAML", first_line(exc), "fix the file it names"), EXIT_USAGE)
    if isinstance(exc, OSError):
        what = exc.strerror or first_line(exc)
        if exc.filename is not None:
            code = EXIT_USAGE if exc.errno in _PATH_ERRNOS else EXIT_FAILED
            return PimlError(Problem(str(exc.filename), what, "check the path and its permissions"), code)
        return PimlError(
            Problem("network", f"{type(exc).__name__}: {what}", "check the address and that the other end is up"),
            EXIT_FAILED,
        )
    return None


def _outputs_never_fail_on_characters() -> None:
    """With PYTHONIOENCODING=ascii or LANG=C, print '?' for what the terminal cannot show instead of failing."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="replace")
            except (ValueError, OSError):
                pass


def main() -> None:
    """Run the command line; every error ends as one line and an exit code (2: the input, 1: a target failed)."""
    try:
        _outputs_never_fail_on_characters()
        import logging

        # paramiko logs a dropped connection's traceback from its transport thread; without a handler Python
        # prints it on stderr. piml reports the failure itself, in one line.
        logging.getLogger("paramiko").addHandler(logging.NullHandler())
        logging.getLogger("paramiko").propagate = False
        from piml.cli import app

        app()
    except SystemExit as exc:
        # typer turns Ctrl-C into a silent exit 130; say it, as for a Ctrl-C outside the command
        if exc.code == 130 and isinstance(getattr(exc.__context__, "__cause__", None), KeyboardInterrupt):
            sys.stderr.write("interrupted\n")
        raise
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    except BrokenPipeError:  # `piml jobs | head`: the reader left; nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the one place that stops tracebacks reaching users
        from piml.errors import PimlError
        from piml.output import error_line

        if not isinstance(exc, PimlError) and os.environ.get("PIML_DEBUG"):
            raise
        problem = exc if isinstance(exc, PimlError) else expected_problem(exc)
        if problem is None:
            error_line(
                f"internal error: {type(exc).__name__}: {exc} (a bug in piml; rerun with PIML_DEBUG=1 for details and report it)"
            )
            sys.exit(1)
        for line in problem.problems:
            error_line(str(line))
        sys.exit(problem.exit_code)
    finally:
        # The command is over: a Ctrl-C now (while threads are joined at exit) would only turn a finished run
        # into a death by signal.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
