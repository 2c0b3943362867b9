"""The errors piml reports to users, and the exit codes they map to.

Every error a user can cause is a `PimlError` carrying one line per problem:
"WHERE: what is wrong; how to fix it". The CLI prints those lines and exits with the
error's code; a traceback reaching the user is a bug.
"""

from __future__ import annotations

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1  # something went wrong on a target (a node, the cluster)
EXIT_USAGE = 2  # bad input or usage: nothing was changed


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the user's input, located as precisely as we can."""

    where: str  # "inventory/hosts.yml:12", "piml.yaml", "--node"
    what: str  # "node 'pi2' has address '10.0.0.300'"
    fix: str = ""  # "use an IPv4/IPv6 address or a host name"
    warning: bool = False

    def __str__(self) -> str:
        text = f"{self.where}: {'warning: ' if self.warning else ''}{self.what}"
        return f"{text}; {self.fix}" if self.fix else text


def by_line(problems: list[Problem]) -> list[Problem]:
    """Problems in the order a reader meets them in the file."""

    def key(problem: Problem) -> tuple:
        _, _, line = problem.where.rpartition(":")
        return (int(line) if line.isdigit() else 0, problem.what)

    return sorted(problems, key=key)


class PimlError(Exception):
    """An error for the user: one or more problems and the exit code they call for."""

    def __init__(self, problems: list[Problem] | Problem | str, exit_code: int = EXIT_USAGE):
        given: list[Problem] | list[Problem | str] = [problems] if isinstance(problems, (Problem, str)) else problems
        self.problems = [p if isinstance(p, Problem) else Problem("piml", p) for p in given]
        self.exit_code = exit_code
        super().__init__("\n".join(str(p) for p in self.problems))


class InputError(PimlError):
    """Bad input: a file, an option, an argument. Exit code 2."""

    def __init__(self, problems: list[Problem] | Problem | str):
        super().__init__(problems, EXIT_USAGE)


def first_line(exc: BaseException) -> str:
    """An exception as one line of at most 300 characters (MLflow's carry a `.message`), for a one-line error."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    line = str(message).strip().splitlines()[0].strip() if str(message).strip() else type(exc).__name__
    return line[:300]
