"""Writing files so that a crash never leaves half a file behind, and secrets stay private."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from piml.errors import InputError, Problem


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` via a temp file in the same directory and a rename.

    The temp file is created with `mode` from the start, so a secret is never readable by
    others, not even for a moment.
    """
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def make_private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it 0700: it holds keys and secrets."""
    Path(path).mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


# --- output files: never an input, never an existing file unasked, private from the first byte ------------

_OS_FIXES = {
    errno.ENOENT: ("no such file or directory there", "create the directory first, or name another place"),
    errno.ENOTDIR: ("a part of the path is a file, not a directory", "name a place inside a directory"),
    errno.EISDIR: ("is a directory", "name a file inside it"),
    errno.EACCES: ("permission denied", "name a place you can write to, or fix its permissions"),
    errno.EPERM: ("not permitted", "name a place you can write to, or fix its permissions"),
    errno.EROFS: ("is on a read-only file system", "name a place on a writable file system"),
    errno.ENAMETOOLONG: ("the name is too long for the file system", "use a shorter name"),
    errno.ENOSPC: ("no space left on the device", "free some space, or name a place on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space, or name a place on another disk"),
    errno.EEXIST: ("already exists", "name another file, or remove it first"),
    errno.ELOOP: ("is a symbolic link, or has too many of them", "name the real file"),
}


def os_error_problem(where: str, exc: OSError, doing: str = "cannot write") -> Problem:
    """An OSError met on a path the user named, as one line: what went wrong there and how to fix it."""
    what, fix = _OS_FIXES.get(exc.errno, (exc.strerror or str(exc), "check the path"))
    return Problem(where, f"{doing}: {what}", fix)


def same_file(a: Path | str, b: Path | str) -> bool:
    """Whether two paths are one file: the same st_dev and st_ino, through symbolic and hard links."""
    try:
        sa, sb = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def refuse_inputs(outputs: Iterable[Path], inputs: Iterable[Path | str], option: str) -> None:
    """InputError when an output would be written over one of the command's inputs."""
    inputs = [i for i in inputs if i]
    problems = []
    for out in outputs:
        for source in inputs:
            if same_file(out, source):
                how = "" if os.path.abspath(out) == os.path.abspath(source) else f" (through a link: it is {source})"
                problems.append(
                    Problem(
                        f"{option} {out}",
                        f"is an input of this command{how}",
                        "name another file, so the input is kept",
                    )
                )
                break
    if problems:
        raise InputError(problems)


def create_new(path: Path | str, mode: int) -> int:
    """Create `path` for writing, failing if anything (a file, a link) is there already; `mode` from the start.

    O_EXCL with O_CREAT neither follows a symbolic link planted at `path` nor opens an existing file, and the
    file is born with `mode` (less the umask), so one meant to be 0600 is never readable by others, not even
    for a moment.
    """
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def publish(tmp: Path | str, path: Path | str, *, replace: bool) -> None:
    """Give the finished file `tmp` its final name. Without `replace`, an existing `path` is never replaced,
    even one that appeared while `tmp` was being written: the link fails instead (FileExistsError)."""
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:  # file systems without hard links (FAT on a USB stick): check, then rename
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EXDEV):
            raise
        if os.path.lexists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
        os.rename(tmp, path)
        return
    os.unlink(tmp)


def make_dirs(path: Path | str) -> None:
    """`mkdir -p`, all or nothing: when a level cannot be made (a name too long, no permission), the levels
    made before it are removed again and the OSError raised."""
    path = Path(path)
    missing = []
    for level in [path, *path.parents]:
        if os.path.isdir(level):
            break
        missing.append(level)
    made = []
    try:
        for level in reversed(missing):
            os.mkdir(level)
            made.append(level)
    except BaseException:
        for level in reversed(made):
            try:
                os.rmdir(level)
            except OSError:
                pass
        raise
