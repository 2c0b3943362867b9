"""`piml backup --scheduled`: copy the archives backup.schedule made to this machine, each checked against its
.sha256 before it takes its final name, only those not here yet. From the bucket when backup.s3_uri is set (no
cluster needed: what you want when MLflow's board is gone), else from the piml-backups volume on its node."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from piml.errors import EXIT_FAILED, PimlError, Problem

ARCHIVE_NAME = re.compile(r"piml-backup-.+-\d{8}T\d{6}Z\.tar\.gz")


def fetch_scheduled(cluster, kube, directory: Path, timeout: float, show: Callable[[str], None]):
    """From the volume, over SSH. Returns (copied, already there)."""
    import shlex

    from piml.backup.take import SCHEDULED_CLAIM, inventory_node, on_node
    from piml.kube.volumes import claim_volume

    namespace = cluster.config.namespace
    found = claim_volume(kube, namespace, SCHEDULED_CLAIM)
    if found is None:
        raise PimlError(
            Problem(
                f"{namespace}/{SCHEDULED_CLAIM}",
                "no volume of scheduled backups: backup.schedule is unset, or it has not run yet "
                "(its first run makes it)",
                "set backup.schedule in piml.yaml and `piml up`; or take one now with `piml backup`",
            ),
            EXIT_FAILED,
        )
    node, path = inventory_node(cluster, SCHEDULED_CLAIM, found[0]), found[1]
    # one trip for every archive's name and checksum; an archive whose .sha256 is not written yet is left for later
    sums = on_node(cluster, node, f"cd {shlex.quote(path)} && cat -- piml-backup-*.tar.gz.sha256 2>/dev/null || true",
                   60.0).stdout  # fmt: skip
    expected_of = {
        name: digest
        for digest, _, name in (line.partition("  ") for line in sums.splitlines())
        if ARCHIVE_NAME.fullmatch(name)
    }

    def fill(name: str, sink: BinaryIO) -> None:
        on_node(cluster, node, f"cat {shlex.quote(f'{path}/{name}')}", timeout, receive=sink)

    return _copy_each(directory, expected_of, fill, f"{node.name}:{path}", show)


def fetch_from_bucket(cluster, directory: Path, timeout: float, show: Callable[[str], None]):
    """From backup.s3_uri, with the user's keys. Returns (copied, already there)."""
    from piml.backup import s3store
    from piml.secrets import require_s3_keys, user_given

    backup = cluster.config.backup
    keys = user_given(cluster.paths.state)
    require_s3_keys(keys, "backup", "backup.s3_uri is set", cluster.paths.show(cluster.paths.secrets))
    name, prefix = s3store.parse_uri(backup.s3_uri)
    bucket = s3store.Bucket(backup.s3_endpoint_url, name, backup.s3_region, keys["backup_s3_access_key"],
                            keys["backup_s3_secret_key"], timeout=min(timeout, 60.0))  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        there = set(bucket.list(prefix + f"piml-backup-{cluster.name}-"))
        # an archive without its .sha256 is still being uploaded: left for later
        archives = sorted(
            k[len(prefix) :] for k in there if ARCHIVE_NAME.fullmatch(k[len(prefix) :]) and k + ".sha256" in there
        )
        present = [a for a in archives if (directory / a).exists()]
        expected_of = {
            a: bucket.get(prefix + a + ".sha256").decode(errors="replace").partition(" ")[0]
            for a in archives
            if a not in present
        }

        def fill(archive: str, sink: BinaryIO) -> None:
            bucket.get(prefix + archive, sink, deadline)

        copied, _ = _copy_each(directory, expected_of, fill, backup.s3_uri, show)
    except s3store.S3Error as exc:
        raise PimlError(Problem(backup.s3_uri, str(exc), "check backup.s3_* in piml.yaml and the keys"),
                        EXIT_FAILED) from None  # fmt: skip
    return copied, present


def _copy_each(directory: Path, expected_of: dict[str, str], fill, source: str, show: Callable[[str], None]):
    """Each archive not in `directory` yet, written by `fill(name, sink)` into a private partial file, checked
    against its sha256, then given its name and its .sha256. Returns (copied, already there)."""
    from piml.backup.archive import sha256_of
    from piml.fsutil import create_new, os_error_problem

    copied, present = [], []
    for name, expected in sorted(expected_of.items()):
        final = directory / name
        if final.exists():
            present.append(name)
            continue
        partial = directory / f".{name}.partial"
        partial.unlink(missing_ok=True)  # what a copy that was stopped left
        try:
            with open(create_new(partial, 0o600), "wb") as sink:
                fill(name, sink)
            if sha256_of(partial) != expected:
                raise PimlError(Problem(f"{source}/{name}", "the copy does not match its .sha256",
                                        "run it again; if it stays so, the archive there is damaged"),
                                EXIT_FAILED)  # fmt: skip
            partial.rename(final)
            with open(create_new(directory / f"{name}.sha256", 0o600), "w") as out:
                out.write(f"{expected}  {name}\n")
        except OSError as exc:
            raise PimlError(os_error_problem(str(directory), exc, "cannot write the copy"), EXIT_FAILED) from None
        finally:
            partial.unlink(missing_ok=True)
        copied.append(final)
        show(f"{name}: copied from {source}")
    return copied, present
