"""The backup archive: one gzipped tar, mode 0600 from its first byte, with a `.sha256` file beside it.

    piml-backup-PROJECT-20261202T210000Z.tar.gz
      manifest.json      what is inside: format, project, when, the versions that made it, each part's sha256
      project.tar        inventory/, piml.yaml and .piml/ (keys, secrets, the kubeconfig): why the archive is 0600
      mlflow.tar         MLflow's volume as the node's tar stream (piml/backup/onnode.py): its SQLite stores, copied
                         online, and its artifacts
      mlflow-db.tar      with mlflow.backend: postgresql, mlflow.sql: pg_dump's plain SQL of MLflow's database
      queue.tar          Redis's volume: its append-only files

Each part is a tar of its own, so a part goes back to its node as the stream it came from, and is checked
against its own sha256 before anything is changed. Reading refuses, naming why, an archive that is damaged
(the whole file's sha256, gzip, tar, a part's sha256), not a piml backup, or of a format this piml does not know.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from piml.errors import InputError, Problem
from piml.fsutil import create_new

FORMAT = "piml-backup/1"
MANIFEST = "manifest.json"
PROJECT_PART = "project"
PART_NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # a part is the file PART.tar in the archive
CHUNK = 1 << 20


@dataclass
class Manifest:
    project: str
    created: str  # UTC, ISO 8601
    versions: dict[str, str]  # what made the data: piml, mlflow, k3s
    parts: dict[str, dict] = field(default_factory=dict)  # name -> {sha256, size, and what it is}
    left_out: dict[str, str] = field(default_factory=dict)  # what this archive does not hold, and why

    def created_stamp(self) -> str:
        return stamp(datetime.fromisoformat(self.created))

    def as_dict(self) -> dict:
        return {
            "format": FORMAT,
            "project": self.project,
            "created": self.created,
            "versions": self.versions,
            "parts": self.parts,
            "left_out": self.left_out,
        }


def stamp(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_project_part(root: Path, out: Path, leave_out: Path | None) -> None:
    """inventory/, piml.yaml and .piml/ of the project at `root` as a tar at `out` (a file created 0600).
    `leave_out`: a directory not to take (where the archives go, when that is inside .piml/)."""
    with os.fdopen(create_new(out, 0o600), "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for name in ("inventory", "piml.yaml", ".piml"):
            if (root / name).exists():
                tar.add(root / name, arcname=name, filter=_skip_under(root, leave_out))


def _skip_under(root: Path, leave_out: Path | None):
    skip = leave_out.resolve() if leave_out else None

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if skip is not None and (skip == (root / info.name).resolve() or skip in (root / info.name).resolve().parents):
            return None
        return info

    return keep


def write_archive(directory: Path, manifest: Manifest, part_files: dict[str, Path]) -> Path:
    """The archive from its manifest and part files (made by the caller, 0600), published under its final name
    only when whole; then its `.sha256`. Returns the archive's path."""
    name = f"piml-backup-{manifest.project}-{manifest.created_stamp()}.tar.gz"
    final, partial = directory / name, directory / f".{name}.partial"
    for part, path in part_files.items():
        manifest.parts[part] = {**manifest.parts.get(part, {}), "sha256": sha256_of(path), "size": path.stat().st_size}
    body = json.dumps(manifest.as_dict(), indent=2, sort_keys=True).encode()
    try:
        with os.fdopen(create_new(partial, 0o600), "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as tar:
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mode = len(body), 0o600
                tar.addfile(info, io.BytesIO(body))
                for part, path in part_files.items():
                    tar.add(path, arcname=f"{part}.tar", recursive=False)
            raw.flush()
            os.fsync(raw.fileno())
        os.rename(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    checksum = directory / f"{name}.sha256"
    with os.fdopen(create_new(checksum, 0o600), "w") as out:
        out.write(f"{sha256_of(final)}  {name}\n")
    return final


# -- reading ------------------------------------------------------------------------------------------


@contextmanager
def opened(archive: Path, scratch: Path) -> Iterator[tuple[Manifest, dict[str, Path]]]:
    """Check `archive` whole and unpack its parts into `scratch` (a private directory): (manifest, part files).
    InputError, naming what is wrong, for anything that is not an intact piml backup of a known format."""
    where = str(archive)
    if not archive.is_file():
        raise InputError(Problem(where, "no such archive", "name a piml-backup-*.tar.gz file made by `piml backup`"))
    checksum = archive.with_name(archive.name + ".sha256")
    if checksum.is_file():
        expected = checksum.read_text(errors="replace").split(" ", 1)[0].strip().lower()
        if sha256_of(archive) != expected:
            raise InputError(
                Problem(
                    where,
                    f"its checksum fails (does not match {checksum.name}): damaged or changed since it was made",
                    "restore from another copy of the archive",
                )
            )
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            manifest = _manifest(tar, where)
            files = {}
            for part, described in manifest.parts.items():
                member = tar.getmember(f"{part}.tar")
                if not member.isfile():
                    raise KeyError(member.name)
                files[part] = scratch / f"{part}.tar"
                with tar.extractfile(member) as src, open(files[part], "wb") as dst:  # type: ignore[union-attr]
                    shutil.copyfileobj(src, dst, CHUNK)
                if sha256_of(files[part]) != described.get("sha256"):
                    raise InputError(
                        Problem(
                            where,
                            f"its part {part}.tar fails its checksum: the archive is damaged",
                            "restore from another copy of the archive",
                        )
                    )
            tar.getmembers()  # to the end of the tar, then of the gzip stream: its CRC and length are checked there
            while tar.fileobj.read(CHUNK):
                pass
    except (tarfile.TarError, EOFError, zlib.error, OSError, KeyError) as exc:
        what = f"{type(exc).__name__}: {exc}" if not isinstance(exc, KeyError) else f"{exc.args[0]} is missing"
        raise InputError(
            Problem(
                where,
                f"not a whole piml backup archive ({what.splitlines()[0][:120]})",
                "name a piml-backup-*.tar.gz file made by `piml backup`, or restore from another copy",
            )
        ) from None
    yield manifest, files


def _manifest(tar: tarfile.TarFile, where: str) -> Manifest:
    member = tar.next()
    if member is None or member.name != MANIFEST or not member.isfile():
        raise KeyError(MANIFEST)
    try:
        data = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
    except (ValueError, UnicodeDecodeError):
        data = None
    return parse_manifest(data, where)


def parse_manifest(data: object, where: str) -> Manifest:
    """A Manifest from a manifest.json's JSON, or InputError naming what is wrong with it."""
    if not isinstance(data, dict) or not isinstance(data.get("format"), str):
        raise InputError(Problem(where, "its manifest.json is not a piml backup manifest", "name a piml backup"))
    if data["format"] != FORMAT:
        raise InputError(
            Problem(
                where,
                f"is of format {data['format'][:40]!r}, and this piml reads {FORMAT!r}",
                "restore it with the piml version that made it",
            )
        )
    project, created, versions = data.get("project"), data.get("created"), data.get("versions")
    parts, left_out = data.get("parts"), data.get("left_out", {})
    valid = (
        isinstance(project, str)
        and isinstance(created, str)
        and _iso(created)
        and isinstance(versions, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in versions.items())
        and isinstance(parts, dict)
        and all(
            isinstance(k, str)
            and PART_NAME.fullmatch(k) is not None
            and isinstance(v, dict)
            and isinstance(v.get("sha256"), str)
            for k, v in parts.items()
        )
        and isinstance(left_out, dict)
    )
    if not valid:
        raise InputError(Problem(where, "its manifest.json is damaged (a field is missing or of the wrong type)",
                                 "restore from another copy of the archive"))  # fmt: skip
    assert isinstance(project, str) and isinstance(created, str)  # for mypy: `valid` said so
    assert isinstance(versions, dict) and isinstance(parts, dict) and isinstance(left_out, dict)
    return Manifest(project, created, dict(versions), dict(parts), {str(k): str(v) for k, v in left_out.items()})


def _iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


@contextmanager
def member(part: Path, name: str, where: str) -> Iterator[IO[bytes]]:
    """The file `name` inside the part tar `part` (checked by `opened`), to read; InputError when it is not there."""
    try:
        with tarfile.open(part, mode="r:") as tar:
            found = tar.getmember(name)
            data = tar.extractfile(found) if found.isfile() else None
            if data is None:
                raise KeyError(name)
            with data:
                yield data
    except (tarfile.TarError, KeyError):
        raise InputError(
            Problem(where, f"its part {part.name} holds no {name}", "restore from another copy of the archive")
        ) from None
