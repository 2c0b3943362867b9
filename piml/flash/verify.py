"""Read back what was written, past the page cache, and compare with the digest taken while writing."""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from piml.flash.readahead import read_ahead
from piml.flash.writer import BLKFLSBUF, REGION, Digest

READ = 8 << 20


@dataclass
class VerifyResult:
    ok: bool
    digest: str
    bad_offset: int | None  # start of the first region that differs


def _open_for_reading(path: str) -> tuple[int, bool]:
    """(fd, direct): O_DIRECT on block devices so the disk itself is read, not our own cached writes."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    if stat.S_ISBLK(os.fstat(fd).st_mode):
        try:
            fcntl.ioctl(fd, BLKFLSBUF)
        except OSError:
            pass
        direct = getattr(os, "O_DIRECT", 0)
        if direct:
            try:
                dfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | direct)
                os.close(fd)
                return dfd, True
            except OSError:
                pass
        return fd, False
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return fd, False


def verify(path: str, size: int, regions: list[str], progress: Callable[[int], None] | None = None) -> VerifyResult:
    """Hash the first `size` bytes of `path` region by region, as writer.Digest does, and compare."""
    fd, direct = _open_for_reading(path)
    digest = Digest()

    def chunks():
        offset = 0
        while offset < size:
            want = min(READ, size - offset)
            if direct:
                aligned = (want + 4095) // 4096 * 4096
                buf = mmap.mmap(-1, aligned)
                got = os.preadv(fd, [buf], offset)
                data = memoryview(buf)[: min(got, want)]
            else:
                data = memoryview(os.pread(fd, want, offset))
            if not len(data):
                raise OSError(5, f"the target ends after {offset} bytes")
            yield data
            offset += len(data)

    done = 0
    pieces = read_ahead(chunks(), depth=4, name="piml-verify-reader")
    try:
        for data in pieces:
            digest.update(data)
            done += len(data)
            if progress:
                progress(done)
    finally:
        pieces.close()  # stops and joins the reader before the descriptor closes
        os.close(fd)
    total, got = digest.finish()
    bad = next((i * REGION for i, (a, b) in enumerate(zip(got, regions, strict=False)) if a != b), None)
    if bad is None and len(got) != len(regions):
        bad = min(len(got), len(regions)) * REGION
    return VerifyResult(bad is None, total, bad)
