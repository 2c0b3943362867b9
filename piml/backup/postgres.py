"""MLflow's PostgreSQL store (`mlflow.backend: postgresql`, the Postgres piml deploys), out of its pod and back in,
with the image's own pg_dump and psql run in the pod through the API server (piml/kube/podexec.py). They connect
on the pod's local socket, where the official image trusts local connections: no password goes anywhere.

Out: `pg_dump` reads one consistent snapshot while MLflow goes on writing. Plain SQL, not the custom format: a
custom-format archive written to a pipe has no data offsets, and pg_restore may then fail to read it out of order.

Back: into a new database first; then, in one transaction, the live one is renamed aside (kept, nothing is lost)
and the new one takes its name. MLflow, stopped meanwhile, finds either its old store or the whole restored one;
a dump that fails halfway changes nothing."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import IO

from piml.errors import EXIT_FAILED, PimlError, Problem

DEPLOYMENT = "mlflow-postgres"
SELECTOR = "app.kubernetes.io/name=mlflow-postgres"
DATABASE = USER = "mlflow"  # templates/mlflow.yaml.j2: POSTGRES_DB, POSTGRES_USER (the image makes it superuser)
RESTORING = "mlflow_piml_restoring"
TRAILER = "-- PostgreSQL database dump complete"

DUMP = ["pg_dump", f"--username={USER}", f"--dbname={DATABASE}", "--no-owner", "--no-privileges"]
# $1: the name the live database is kept under. Each step stops the script at its first error (sh -e, psql's
# ON_ERROR_STOP); the renames are one transaction. Prints the name the old database is kept under.
LOAD = f"""
q() {{ psql -X -q -v ON_ERROR_STOP=1 --username={USER} "$@"; }}
q --dbname=postgres -c 'DROP DATABASE IF EXISTS {RESTORING}' -c 'CREATE DATABASE {RESTORING}'
q --dbname={RESTORING} --single-transaction --file=- >/dev/null
q --dbname=postgres --single-transaction -c "ALTER DATABASE {DATABASE} RENAME TO $1" \\
  -c 'ALTER DATABASE {RESTORING} RENAME TO {DATABASE}'
echo "$1"
"""


def dump(kube, namespace: str, out: Path, timeout: float) -> str:
    """pg_dump of MLflow's database into `out` (a file the caller made private); returns the server's version."""
    from piml.kube.podexec import ready_pod, run_in_pod

    pod = ready_pod(kube, namespace, SELECTOR, DEPLOYMENT)
    with open(out, "wb") as sink:
        done = run_in_pod(kube, namespace, pod, DUMP, timeout, stdout=sink)
    with open(out, "rb") as dumped:
        whole = complete(dumped)
    if done.exit_code != 0 or not whole:
        why = done.last_line() if done.exit_code != 0 else f"its output ends before {TRAILER!r}"
        raise PimlError(
            Problem(f"{namespace}/{pod}", f"pg_dump failed: {why}", f"see `piml status`; "
                    f"`kubectl -n {namespace} logs {pod}`"), EXIT_FAILED,
        )  # fmt: skip
    return server_version(out)


def load(kube, namespace: str, dumped: IO[bytes], stamp: str, timeout: float) -> str:
    """Put the dump read from `dumped` back as MLflow's database (MLflow stopped); returns the name the replaced one
    is kept under. PimlError naming the pod when psql fails: then the live database is as it was."""
    from piml.kube.podexec import ready_pod, run_in_pod

    if not complete(dumped):
        raise PimlError(
            Problem(f"{namespace}/{DEPLOYMENT}", "the archive's dump of MLflow's database is cut short (it lacks "
                    f"pg_dump's last line, {TRAILER!r})", "restore from another archive"), EXIT_FAILED,
        )  # fmt: skip
    pod = ready_pod(kube, namespace, SELECTOR, DEPLOYMENT)
    aside = f"{DATABASE}_before_restore_{stamp.lower()}"
    if not re.fullmatch(r"[a-z0-9_]{1,63}", aside):
        raise ValueError(aside)  # a Postgres identifier, unquoted: the stamp is ours (archive.stamp)
    said = io.BytesIO()
    done = run_in_pod(kube, namespace, pod, ["sh", "-ec", LOAD, "sh", aside], timeout, stdin=dumped, stdout=said)
    if done.exit_code != 0:
        raise PimlError(
            Problem(f"{namespace}/{pod}", f"putting MLflow's database back failed: {done.last_line()}",
                    "MLflow's database is as it was: fix what psql says, then run piml restore again"), EXIT_FAILED,
        )  # fmt: skip
    return said.getvalue().decode(errors="replace").strip() or aside


def complete(dumped: IO[bytes]) -> bool:
    """Whether the dump ends with pg_dump's last line: psql loads a dump cut short inside a table's data without an
    error (the COPY ends at the end of the input). `dumped` is left at its start."""
    dumped.seek(0, io.SEEK_END)
    dumped.seek(max(0, dumped.tell() - 256))
    end = dumped.read()
    dumped.seek(0)
    return TRAILER.encode() in end


def server_version(dumped: Path) -> str:
    """The server version pg_dump wrote in the dump's header ('-- Dumped from database version 16.4'), or ''."""
    with open(dumped, "rb") as handle:
        head = handle.read(4096).decode(errors="replace")
    found = re.search(r"^-- Dumped from database version (\S+)", head, re.MULTILINE)
    return found.group(1) if found else ""
