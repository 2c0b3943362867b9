"""Writing files so that a crash never leaves half a file behind, and secrets stay private."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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
