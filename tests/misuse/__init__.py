"""Misuse tests (issue 16): bad, empty and conflicting input to every command. Each asserts the exit code, a
one-line message and that nothing was changed. No test nodes: nodes are loopback ports, so nothing is ever touched."""

import subprocess


def one_error(result: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2 and one line on stderr (`error: ...`) naming `words`; no traceback, no internal error."""
    said = result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, f"exit {result.returncode}:\n{said[-3000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), said[-3000:]
    assert "Traceback" not in said and "internal error" not in said, said[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]
