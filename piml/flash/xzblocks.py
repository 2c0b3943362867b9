"""Decode a multi-block .xz file in this process, several blocks at once.

Every block listed in the file's index is decoded on its own: it is wrapped in a minimal single-block
.xz stream (the file's stream flags, the block's bytes as they are in the file, a one-record index and
a footer) and handed to liblzma, which checks the block's integrity check (CRC32/CRC64/SHA-256) and
its sizes against that index. liblzma releases the GIL, so a small thread pool decodes a bounded
number of blocks ahead while the writer works on the previous one; the blocks come out in order.
A small block stored byte for byte like one just decoded (empty space) is not decoded again.
No pipe, no second process, no copy of the decoded data on the way to the writer.
"""

from __future__ import annotations

import lzma
import os
import struct
import zlib
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

MAGIC = b"\xfd7zXZ\x00"
FOOTER_MAGIC = b"YZ"
CHECKS = (0x00, 0x01, 0x04, 0x0A)  # none, CRC32, CRC64, SHA-256: the ones liblzma verifies
MAX_BLOCK = 256 << 20  # larger blocks (uncompressed) are left to the streaming decoder: memory
# Identical small blocks (an image's empty space: 24 MiB of zeros packs into ~4 KiB, the same bytes
# every time) are decoded once: the bytes read are compared, so reuse is exact.
REUSE_STORED = 64 << 10  # blocks up to this size as stored are candidates
REUSE_UNCOMPRESSED = 64 << 20  # whose output is at most this
REUSE_KEEP = 2  # distinct blocks remembered


class BlockError(Exception):
    """A block does not decode to what the index promises: `str()` says which and why."""


def usable(blocks: Sequence, file_size: int | None = None) -> bool:
    """Whether `blocks` (sources.XzBlock) can be decoded block by block: more than one, sizes known
    and bounded, check types liblzma verifies. Anything else goes the streaming way."""
    if len(blocks) < 2:
        return False
    for block in blocks:
        flags = block.stream_flags
        if len(flags) != 2 or flags[0] != 0 or flags[1] not in CHECKS:
            return False
        if not 0 < block.uncompressed <= MAX_BLOCK or block.unpadded < 6:
            return False
        if file_size is not None and block.offset + (block.unpadded + 3) // 4 * 4 > file_size:
            return False
    return True


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def wrap(flags: bytes, block_bytes: bytes, unpadded: int, uncompressed: int) -> bytes:
    """A complete single-block .xz stream around `block_bytes` (the block as stored, padding included)."""
    header = MAGIC + flags + struct.pack("<I", zlib.crc32(flags))
    index = b"\x00" + _varint(1) + _varint(unpadded) + _varint(uncompressed)
    index += b"\x00" * (-len(index) % 4)
    index += struct.pack("<I", zlib.crc32(index))
    backward = struct.pack("<I", len(index) // 4 - 1)
    footer = struct.pack("<I", zlib.crc32(backward + flags)) + backward + flags + FOOTER_MAGIC
    return b"".join((header, block_bytes, index, footer))


def _read_block(fd: int, block) -> bytes:
    stored = (block.unpadded + 3) // 4 * 4
    data = os.pread(fd, stored, block.offset)
    if len(data) != stored:
        raise BlockError(f"ends inside the .xz block at byte {block.offset} (truncated)")
    return data


def decode_block(fd: int, block, data: bytes | None = None) -> bytes:
    """The uncompressed bytes of one block (sources.XzBlock), read from `fd` unless given as `data`
    (the block as stored). Raises BlockError."""
    if data is None:
        data = _read_block(fd, block)
    decoder = lzma.LZMADecompressor(lzma.FORMAT_XZ)
    try:
        out = decoder.decompress(
            wrap(block.stream_flags, data, block.unpadded, block.uncompressed), max_length=block.uncompressed + 1
        )
    except lzma.LZMAError as exc:
        raise BlockError(f"has a corrupt .xz block at byte {block.offset} ({exc})") from None
    if len(out) != block.uncompressed or not decoder.eof or decoder.unused_data:
        raise BlockError(
            f"has a corrupt .xz block at byte {block.offset} (it decodes to {len(out)} bytes, "
            f"its index says {block.uncompressed})"
        )
    return out


class BlockReader:
    """The decoded bytes of an .xz file, from `workers` threads decoding up to `ahead` blocks ahead.

    `chunks(size)` yields read-only memoryviews (zero copy) in order; `readinto` copies, for callers
    that want a file-like object. Either raises BlockError on bad data. Close it (or the generator)
    to stop the workers.
    """

    def __init__(self, path: str | Path, blocks: Sequence, workers: int | None = None, ahead: int | None = None):
        self.blocks = list(blocks)
        self.workers = max(1, min(workers or os.cpu_count() or 1, 4))
        self.ahead = max(1, ahead or self.workers + 1)
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except (AttributeError, OSError):
            pass
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="piml-xz")
        self._pending: deque[Future] = deque()
        self._reuse: dict[tuple, Future] = {}
        self._next = 0  # next block to submit
        self._current = memoryview(b"")
        self._iter: Iterator[bytes] | None = None
        self._closed = False

    def _submit(self, block) -> Future:
        if block.unpadded > REUSE_STORED or block.uncompressed > REUSE_UNCOMPRESSED:
            return self._pool.submit(decode_block, self._fd, block)
        try:
            data = _read_block(self._fd, block)
        except BlockError as exc:
            failed: Future = Future()
            failed.set_exception(exc)
            return failed
        key = (block.stream_flags, block.unpadded, block.uncompressed, data)
        future = self._reuse.get(key)
        if future is None:
            future = self._pool.submit(decode_block, self._fd, block, data)
            self._reuse[key] = future
            while len(self._reuse) > REUSE_KEEP:
                del self._reuse[next(iter(self._reuse))]
        return future

    def _fill(self) -> None:
        while len(self._pending) < self.ahead and self._next < len(self.blocks):
            self._pending.append(self._submit(self.blocks[self._next]))
            self._next += 1

    def _blocks(self) -> Iterator[bytes]:
        while True:
            self._fill()
            if not self._pending:
                return
            data = self._pending.popleft().result()
            self._fill()  # a worker starts on the next block before this one is handed out
            yield data

    def chunks(self, size: int) -> Iterator[memoryview]:
        try:
            for data in self._blocks():
                view = memoryview(data).toreadonly()
                for start in range(0, len(view), size):
                    yield view[start : start + size]
                del view, data
        finally:
            self.close()

    def readinto(self, buf) -> int:
        out = memoryview(buf).cast("B")
        got = 0
        while got < len(out):
            if not len(self._current):
                if self._iter is None:
                    self._iter = self._blocks()
                data = next(self._iter, None)
                if data is None:
                    break
                self._current = memoryview(data).toreadonly()
            take = min(len(out) - got, len(self._current))
            out[got : got + take] = self._current[:take]
            self._current = self._current[take:]
            got += take
        return got

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)  # a running decode finishes (bounded: one block) before the fd closes
        self._pending.clear()
        self._reuse.clear()
        self._current = memoryview(b"")
        os.close(self._fd)
