"""Helpers of the health tests."""

from __future__ import annotations

import os
import subprocess
import sys

from piml.health.result import CheckFailed
from tests.queue.helpers import assert_no_secrets


def local_dask_python(address: str, timeout: float = 180):
    """Endpoints.dask_python for local services: the script in a subprocess here, with DASK_SCHEDULER_ADDRESS."""

    def run(script: str) -> str:
        try:
            out = subprocess.run(
                [sys.executable, "-c", script],
                env={**os.environ, "DASK_SCHEDULER_ADDRESS": address},
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"the Dask script did not finish within {timeout:g} s") from None
        if out.returncode:
            tail = " | ".join(out.stderr.strip().splitlines()[-3:])
            raise CheckFailed(f"the Dask script exited {out.returncode}: {tail}")
        return out.stdout

    return run


def rows_text(rows) -> str:
    return "\n".join(f"{r.group} {r.target} {r.check} {r.status}: {r.detail} | {r.fix}" for r in rows)


def by_key(rows) -> dict:
    return {(r.target, r.check): r for r in rows}


def assert_rows_clean(rows, *extra_secrets: str) -> None:
    """No password in any row (the session's, and any wrong one a test passed)."""
    text = rows_text(rows)
    assert_no_secrets(text)
    for secret in extra_secrets:
        assert secret not in text, "a password appeared in a row"
