"""Write an image stream to a disk or a file: large aligned writes, zero blocks skipped only where the
target is known to read back zeros, a digest of exactly what was written, fsync before done.

Order of work on a disk:
  1. zero the first MiB (the old partition table): a disk left by an interrupted flash looks empty
     instead of half-booting an OS;
  2. write the image from the second MiB on; an all-zero run is not written when the kernel zeroes
     that range for us: fallocate(PUNCH_HOLE) on a block device issues WRITE ZEROES/discard with
     "no fallback", so it either guarantees zeroes or fails (then the zeros are written);
  3. write the first MiB, fsync, zero the disk's last MiB (a stale backup GPT) when past the image.
On a fresh output file, zero runs become holes (a truncated file reads back zeros).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import mmap
import os
import stat
import struct
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from piml.flash import partitions
from piml.flash.readahead import read_ahead
from piml.flash.sources import SourceError, Stream
from piml.fsutil import create_new

CHUNK = 4 << 20  # unit of reading, hashing and writing
GRAIN = 256 << 10  # zero-detection granularity (aligned to the image start)
HEAD = 1 << 20  # held back and written last
REGION = 64 << 20  # one digest per region, so a mismatch can be located
SYNC_WINDOW = 64 << 20  # start write-back every window; wait for the one before
MAX_EDIT_PREFIX = 2 << 30  # the boot partition must end within the first 2 GiB to be edited in memory
ZEROS = bytes(CHUNK)
ZERO_GRAIN = bytes(GRAIN)

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
SYNC_FILE_RANGE_WAIT_BEFORE = 1
SYNC_FILE_RANGE_WRITE = 2
SYNC_FILE_RANGE_WAIT_AFTER = 4
BLKFLSBUF = 0x1261
BLKSSZGET = 0x1268
O_DIRECT = getattr(os, "O_DIRECT", 0)

_libc = None


def libc():
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name, use_errno=True) if name else False
    return _libc or None


class TargetError(Exception):
    """Writing to the target failed (unplugged, I/O error, no space): `errno` tells which."""

    def __init__(self, message: str, err: int = 0, done: int = 0):
        super().__init__(message)
        self.errno = err
        self.done = done


class TooLarge(Exception):
    def __init__(self, needed: int, capacity: int):
        super().__init__(f"the image needs {needed} bytes, the target has {capacity}")
        self.needed, self.capacity = needed, capacity


class Interrupted(Exception):
    def __init__(self, done: int):
        super().__init__("interrupted")
        self.done = done


@dataclass
class WriteResult:
    size: int
    digest: str
    regions: list[str]
    written: int  # bytes actually written
    zeroed: int  # bytes left to the kernel's zeroing (or holes)
    seconds: float
    zero_method: str  # "punch", "sparse" or "write"
    edited: bool = False
    notes: list[str] = field(default_factory=list)


class Digest:
    """sha256 per REGION bytes; the total digest is the sha256 of the region digests."""

    def __init__(self):
        self.regions: list[str] = []
        self._h = hashlib.sha256()
        self._fill = 0

    def update(self, data) -> None:
        view = memoryview(data)
        while len(view):
            take = min(len(view), REGION - self._fill)
            self._h.update(view[:take])
            self._fill += take
            view = view[take:]
            if self._fill == REGION:
                self.regions.append(self._h.hexdigest())
                self._h = hashlib.sha256()
                self._fill = 0

    def finish(self) -> tuple[str, list[str]]:
        if self._fill:
            self.regions.append(self._h.hexdigest())
            self._h, self._fill = hashlib.sha256(), 0
        total = hashlib.sha256("".join(self.regions).encode()).hexdigest()
        return total, list(self.regions)


class Target:
    """A block device (opened exclusively: the kernel refuses it while mounted) or an output file.

    A disk is written with O_DIRECT where it allows: the data goes from one aligned buffer to the disk
    without passing through the page cache, which on a small machine costs the decompressor more CPU
    than the copy into that buffer does, and progress then counts bytes the disk has taken. A write
    that is not aligned to the disk's logical block (rare: an odd-sized .xz block) goes through the
    page cache instead; fsync covers both."""

    def __init__(self, path: str, *, device: bool, capacity: int | None = None, mode: int = 0o644):
        """`mode` is an output file's: it is created new (never an existing file or a link followed) with that
        mode from the start, so an image holding a secret (a Wi-Fi PSK) is 0600 before its first byte."""
        self.path = path
        self.device = device
        self.direct = False
        if device:
            self.fd, self.direct = _open_device(path)
            if not stat.S_ISBLK(os.fstat(self.fd).st_mode):
                os.close(self.fd)
                raise TargetError(f"{path} is not a block device")
            self.capacity = capacity if capacity is not None else os.lseek(self.fd, 0, os.SEEK_END)
            self.zero_method = "punch"
        else:
            self.fd = create_new(path, mode)
            self.capacity = None
            self.zero_method = "sparse"
        self.block = _logical_block(self.fd) if self.direct else 1
        self._buffer = mmap.mmap(-1, CHUNK) if self.direct else None  # page-aligned, as O_DIRECT wants
        self._fd_direct = self.direct  # whether O_DIRECT is set on fd right now
        self._sync_started = 0

    def write(self, offset: int, data) -> None:
        view = memoryview(data)
        if self.direct and not offset % self.block and not len(view) % self.block:
            self._set_direct(True)
            while len(view):
                take = min(len(view), CHUNK)
                self._buffer[:take] = view[:take]
                self._pwrite(offset, memoryview(self._buffer)[:take])
                view, offset = view[take:], offset + take
            return
        self._set_direct(False)
        self._pwrite(offset, view)

    def _pwrite(self, offset: int, view: memoryview) -> None:
        while len(view):
            n = os.pwrite(self.fd, view, offset)
            if n <= 0:
                raise OSError(errno.EIO, "short write")
            view, offset = view[n:], offset + n

    def _set_direct(self, on: bool) -> None:
        if self._fd_direct != on:
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | O_DIRECT if on else flags & ~O_DIRECT)
            self._fd_direct = on

    def zero(self, offset: int, length: int) -> bool:
        """Make [offset, offset+length) read back zeros without writing them; False if the disk cannot."""
        if not self.device:
            return True  # a hole in a freshly truncated file
        if self.zero_method != "punch":
            return False
        lib = libc()
        if lib is None or not hasattr(lib, "fallocate"):
            self.zero_method = "write"
            return False
        lib.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong)
        rc = lib.fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
        if rc == 0:
            return True
        err = ctypes.get_errno()
        if err in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOTTY, errno.ENOSYS, errno.ENODEV):
            self.zero_method = "write"
            return False
        raise OSError(err, os.strerror(err))

    def write_zeros(self, offset: int, length: int) -> None:
        while length > 0:
            take = min(length, CHUNK)
            self.write(offset, ZEROS[:take])
            offset, length = offset + take, length - take

    def progress_sync(self, written_to: int) -> None:
        """Keep dirty pages bounded and the progress honest: start write-back of each full window and
        wait for the window before it (Linux sync_file_range; elsewhere nothing)."""
        lib = libc()
        if self.direct or lib is None or not hasattr(lib, "sync_file_range"):
            return  # with O_DIRECT the disk has taken every write already
        lib.sync_file_range.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
        while written_to - self._sync_started >= SYNC_WINDOW:
            start = self._sync_started
            lib.sync_file_range(self.fd, start, SYNC_WINDOW, SYNC_FILE_RANGE_WRITE)
            if start >= SYNC_WINDOW:
                lib.sync_file_range(
                    self.fd,
                    start - SYNC_WINDOW,
                    SYNC_WINDOW,
                    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER,
                )
            self._sync_started = start + SYNC_WINDOW

    def finish(self, size: int) -> None:
        if not self.device:
            os.ftruncate(self.fd, size)
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._buffer is not None:
            try:
                self._buffer.close()
            except BufferError:  # a failed write's traceback still holds a view: freed with it
                pass
            self._buffer = None


def _open_device(path: str) -> tuple[int, bool]:
    """(fd, direct): the disk opened exclusively, with O_DIRECT unless it refuses that."""
    flags = os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC
    if O_DIRECT:
        try:
            return os.open(path, flags | O_DIRECT), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
    return os.open(path, flags), False


def _logical_block(fd: int) -> int:
    """The disk's logical block size (BLKSSZGET), what O_DIRECT offsets and lengths must be multiples of."""
    try:
        size = struct.unpack("i", fcntl.ioctl(fd, BLKSSZGET, b"\0" * 4))[0]
    except OSError:
        size = 0
    return size if size >= 512 and size & (size - 1) == 0 else 4096


def _handed_over(views):
    try:
        for view in views:
            yield view, len(view)
    finally:
        views.close()  # stops the source's decoders before the stream closes


def _pieces(stream: Stream):
    """Chunks of the stream as (buffer, length), read ahead in a thread; a source that decodes ahead
    in its own threads hands its buffers over as they are."""
    views = stream.chunks(CHUNK)
    if views is not None:
        return _handed_over(views)

    def chunks():
        while True:
            buf = bytearray(CHUNK)
            n = stream.readinto(buf)
            if not n:
                return
            yield buf, n

    return read_ahead(chunks(), depth=16, name="piml-flash-reader")


def _aligned(pieces, edit: Callable[[memoryview], None] | None, edited: list[bool]):
    """(offset, memoryview) chunks aligned to CHUNK; with `edit`, the boot partition is first
    gathered in memory, edited there, and passed on. `edited[0]` tells whether it was."""
    offset = 0
    it = iter(pieces)
    if edit is not None:
        prefix = bytearray()
        boot = None
        for buf, n in it:
            prefix += memoryview(buf)[:n]
            if boot is None and len(prefix) >= partitions.HEADER_BYTES:
                boot = partitions.boot_partition(bytes(prefix[: partitions.HEADER_BYTES]))
                if boot is None:
                    raise EditError("has no FAT boot partition in its partition table")
                if boot.end > MAX_EDIT_PREFIX:
                    raise EditError(
                        f"has its boot partition ending at {boot.end >> 20} MiB, beyond the {MAX_EDIT_PREFIX >> 20} MiB piml edits in memory"
                    )
            if boot is not None and len(prefix) >= boot.end:
                break
        if boot is None or len(prefix) < boot.end:
            raise EditError("ends before its boot partition does (truncated image)")
        view = memoryview(prefix)
        edit(view[boot.start : boot.end])
        edited[0] = True
        whole = len(prefix) - len(prefix) % CHUNK
        for start in range(0, whole, CHUNK):
            yield start, view[start : start + CHUNK]
        offset = whole
        pending = bytearray(view[whole:])
        del view, prefix
        for buf, n in it:
            pending += memoryview(buf)[:n]
            if len(pending) >= CHUNK:
                pv = memoryview(pending)
                yield offset, pv[:CHUNK]
                offset += CHUNK
                rest = bytearray(pv[CHUNK:])
                del pv
                pending = rest
        if pending:
            yield offset, memoryview(pending)
        return
    for buf, n in it:
        yield offset, memoryview(buf)[:n]
        offset += n


def _all_zero(piece: memoryview) -> bool:
    # data nearly always shows in its first bytes: look there before copying the whole piece to compare
    if piece[:64].tobytes() != ZERO_GRAIN[: min(64, len(piece))]:
        return False
    return piece.tobytes() == ZERO_GRAIN[: len(piece)]


class EditError(Exception):
    """The image cannot be customised: `str()` continues "IMAGE ..."."""


def write_image(
    stream: Stream,
    target: Target,
    *,
    size_hint: int = 0,
    edit: Callable[[memoryview], None] | None = None,
    progress: Callable[[int], None] | None = None,
    digest: bool = True,
) -> WriteResult:
    """Copy `stream` to `target`. Raises TooLarge before writing anything when the image (by its
    declared size or partition table) exceeds the disk; SourceError, TargetError, Interrupted after.
    Without `digest` (nothing will be verified) the hashing is skipped: on few cores it competes
    with the decompressor."""
    started = time.monotonic()
    hashing = digest
    digest = Digest()
    hasher = ThreadPoolExecutor(1, thread_name_prefix="piml-flash-hash")
    done = written = zeroed = 0
    zero_run: tuple[int, int] | None = None  # pending [start, end) of zero grains
    head: bytes | None = None
    edited = [False]
    capacity = target.capacity

    def flush_zero_run() -> None:
        nonlocal zero_run, zeroed, written
        if zero_run is None:
            return
        start, end = zero_run
        zero_run = None
        if target.zero(start, end - start):
            zeroed += end - start
        else:
            target.write_zeros(start, end - start)
            written += end - start

    pieces = _pieces(stream)
    try:
        for offset, data in _aligned(pieces, edit, edited):
            length = len(data)
            if offset == 0:
                needed = max(size_hint, partitions.image_extent(bytes(data[: partitions.HEADER_BYTES])))
                if capacity is not None and needed > capacity:
                    raise TooLarge(needed, capacity)
                if target.device:
                    target.write_zeros(0, min(HEAD, capacity or HEAD))
            if capacity is not None and offset + length > capacity:
                raise TooLarge(offset + length, capacity)
            future = hasher.submit(digest.update, data) if hashing else None
            pos = 0
            if offset < HEAD:
                keep = min(length, HEAD - offset)
                head = (head or b"") + bytes(data[:keep])
                pos = keep
            # runs of grains: zero runs are deferred (merged across chunks), data runs written at once
            while pos < length:
                grain_end = min(length, (offset + pos) // GRAIN * GRAIN + GRAIN - offset)
                piece = data[pos:grain_end]
                is_zero = target.zero_method != "write" and _all_zero(piece)
                if is_zero:
                    if zero_run and zero_run[1] == offset + pos:
                        zero_run = (zero_run[0], offset + grain_end)
                    else:
                        flush_zero_run()
                        zero_run = (offset + pos, offset + grain_end)
                    pos = grain_end
                    continue
                flush_zero_run()
                run_end = grain_end
                while run_end < length:  # extend the data run over following non-zero grains
                    nxt = min(length, run_end + GRAIN)
                    if target.zero_method != "write" and _all_zero(data[run_end:nxt]):
                        break
                    run_end = nxt
                target.write(offset + pos, data[pos:run_end])
                written += run_end - pos
                pos = run_end
            if future is not None:
                future.result()
            done = offset + length
            target.progress_sync(done)
            if progress:
                progress(done)
        flush_zero_run()
        if head is not None:
            target.write(0, head)
            written += len(head)
        target.finish(done)
        if target.device and capacity and capacity - done >= HEAD:
            target.write_zeros(capacity - HEAD, HEAD)  # a stale backup GPT would contradict the new table
            os.fsync(target.fd)
    except KeyboardInterrupt:
        raise Interrupted(done) from None
    except OSError as exc:
        raise TargetError(exc.strerror or str(exc), exc.errno or 0, done) from None
    finally:
        pieces.close()  # stops and joins the reader before the stream closes
        hasher.shutdown(wait=True)
        stream.close()
    total, regions = digest.finish()
    return WriteResult(
        done, total, regions, written, zeroed, time.monotonic() - started, target.zero_method, edited=edited[0]
    )


__all__ = [
    "write_image",
    "Target",
    "WriteResult",
    "TargetError",
    "TooLarge",
    "Interrupted",
    "EditError",
    "SourceError",
    "Digest",
]
