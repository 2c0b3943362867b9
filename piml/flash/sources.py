"""Image sources: what kind an image file is, how big it is unpacked, and a stream of its raw bytes.

Decompression uses every core where the format allows: multi-block .xz files are decoded block by
block in piml's own threads (xzblocks: no pipe, no second process, no copy), other .xz files by
`xz -T0`; `pigz`/`zstd` run in their own process beside piml's writer. When a tool is missing,
Python's own decoder is used (slower, same result), so `--output` works anywhere.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from piml.flash import xzblocks
from piml.flash.xzblocks import BlockError, BlockReader

KINDS = ("raw", "xz", "gz", "zst", "zip")
SUFFIXES = {
    ".img": "raw",
    ".bin": "raw",
    ".raw": "raw",
    ".xz": "xz",
    ".gz": "gz",
    ".zst": "zst",
    ".zstd": "zst",
    ".zip": "zip",
}
MAGIC = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x1f\x8b", "gz"),
    (b"\x28\xb5\x2f\xfd", "zst"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
)
UNSUPPORTED_MAGIC = ((b"BZh", "bzip2"), (b"7z\xbc\xaf\x27\x1c", "7-Zip"), (b"\x04\x22\x4d\x18", "lz4"))


class SourceError(Exception):
    """The image cannot be read as what it claims to be: `what` says why, for one error line."""


def kind_from_name(name: str) -> str | None:
    lower = name.lower()
    for suffix, kind in SUFFIXES.items():
        if lower.endswith(suffix):
            return kind
    return None


def detect_kind(name: str, head: bytes) -> str:
    """The kind of image from its first bytes, checked against its name. Raises SourceError.

    Content wins over the name; a name that promises a compression the content lacks is an error
    (a failed or wrong download), because guessing "raw" would flash garbage.
    """
    by_magic = next((kind for magic, kind in MAGIC if head.startswith(magic)), None)
    by_name = kind_from_name(name)
    if by_magic is None:
        other = next((label for magic, label in UNSUPPORTED_MAGIC if head.startswith(magic)), None)
        if other:
            raise SourceError(
                f"is a {other} archive, which piml does not read; unpack it first, or use .img, .img.xz, .img.gz, .img.zst or .zip"
            )
        if by_name not in (None, "raw"):
            raise SourceError(
                f"is named .{by_name} but is not a {by_name} archive (corrupt or wrong download); download it again"
            )
        if not head:
            raise SourceError("is empty; download it again")
        return "raw"
    return by_magic


# --- .xz: sizes and the block list from the index at the end of the file ------------------------


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(9):
        if pos >= len(data):
            raise SourceError("ends in the middle of its index (truncated); download it again")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos
    raise SourceError("has a corrupt index; download it again")


@dataclass(frozen=True)
class XzBlock:
    offset: int  # of the block in the file
    unpadded: int
    uncompressed: int
    stream_flags: bytes  # the stream's 2 flag bytes (check type)


def xz_blocks(tail_reader, file_size: int) -> list[XzBlock]:
    """The blocks of every stream of an .xz file, read from its end. Raises SourceError if truncated.

    `tail_reader(offset, size)` returns bytes of the file. Pure apart from that callback, so it is fuzzed.
    """
    blocks: list[XzBlock] = []
    end = file_size
    streams = 0
    while end > 0:
        while end >= 4 and tail_reader(end - 4, 4) == b"\x00\x00\x00\x00":  # stream padding
            end -= 4
        if end < 24:
            raise SourceError("is too short to be a complete .xz file (truncated); download it again")
        footer = tail_reader(end - 12, 12)
        if footer[10:12] != b"YZ":
            raise SourceError("has no .xz end marker: the download is truncated or corrupt; download it again")
        backward = (int.from_bytes(footer[4:8], "little") + 1) * 4
        index_start = end - 12 - backward
        if index_start < 12:
            raise SourceError("has a corrupt .xz index; download it again")
        index = tail_reader(index_start, backward)
        if not index or index[0] != 0:
            raise SourceError("has a corrupt .xz index; download it again")
        count, pos = _varint(index, 1)
        if count > backward:
            raise SourceError("has a corrupt .xz index; download it again")
        records = []
        for _ in range(count):
            unpadded, pos = _varint(index, pos)
            uncompressed, pos = _varint(index, pos)
            records.append((unpadded, uncompressed))
        blocks_size = sum((u + 3) // 4 * 4 for u, _ in records)
        stream_start = index_start - blocks_size - 12
        if stream_start < 0:
            raise SourceError("has a corrupt .xz index; download it again")
        header = tail_reader(stream_start, 12)
        if header[:6] != b"\xfd7zXZ\x00" or header[6:8] != footer[8:10]:
            raise SourceError("is corrupt (.xz stream header and footer disagree); download it again")
        offset = stream_start + 12
        stream_blocks = []
        for unpadded, uncompressed in records:
            stream_blocks.append(XzBlock(offset, unpadded, uncompressed, bytes(header[6:8])))
            offset += (unpadded + 3) // 4 * 4
        blocks[:0] = stream_blocks
        end = stream_start
        streams += 1
        if streams > 10000:
            raise SourceError("has too many .xz streams")
    return blocks


def _file_reader(path: Path):
    handle = open(path, "rb")

    def read(offset: int, size: int) -> bytes:
        handle.seek(offset)
        return handle.read(size)

    return handle, read


# --- .zst: the first frame's content size -------------------------------------------------------


def zstd_frame_size(head: bytes) -> int | None:
    """The content size a zstd frame header declares, or None when it declares none."""
    if len(head) < 6 or head[:4] != b"\x28\xb5\x2f\xfd":
        return None
    fhd = head[4]
    fcs_flag = fhd >> 6
    single = (fhd >> 5) & 1
    dict_flag = fhd & 3
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if width == 0 or len(head) < pos + width:
        return None
    value = int.from_bytes(head[pos : pos + width], "little")
    return value + 256 if width == 2 else value


# --- opening ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    path: Path
    kind: str
    size: int | None  # unpacked size when the format tells it exactly; None otherwise
    size_hint: int = 0  # a lower bound when `size` is None
    member: str | None = None  # the .img inside a .zip
    blocks: int = 0  # .xz blocks (more than one can be decoded in parallel)

    def describe(self) -> str:
        label = self.kind if self.kind != "raw" else "raw image"
        return f"{self.path.name} ({label})"


def inspect(path: Path) -> Image:
    """What `path` holds, checked for truncation where the format allows. Raises SourceError."""
    path = Path(path)
    try:
        st = path.stat()
        if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode):  # opening one waits for a writer, maybe forever
            raise SourceError(
                "is a pipe, not an image file (piml reads an image more than once); save it to a file first"
            )
        with open(path, "rb") as handle:
            head = handle.read(64 * 1024)
    except FileNotFoundError:
        raise SourceError("no such file; check the path, or give an https:// URL with --sha256") from None
    except IsADirectoryError:
        raise SourceError("is a directory; name the image file") from None
    except OSError as exc:
        raise SourceError(f"cannot be read: {exc.strerror}") from None
    kind = detect_kind(path.name, head)
    if kind == "raw":
        return Image(path, kind, st.st_size)
    if kind == "xz":
        handle, read = _file_reader(path)
        with handle:
            blocks = xz_blocks(read, st.st_size)
        return Image(path, kind, sum(b.uncompressed for b in blocks), blocks=len(blocks))
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                members = [i for i in archive.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError) as exc:
            raise SourceError(
                f"is not a readable zip archive ({exc}): truncated or corrupt; download it again"
            ) from None
        images = [m for m in members if m.filename.lower().endswith((".img", ".bin", ".raw"))] or members
        if not images:
            raise SourceError("is a zip archive with no files in it; download it again")
        member = max(images, key=lambda m: m.file_size)
        return Image(path, kind, member.file_size, member=member.filename)
    if kind == "zst":
        return Image(path, kind, None, size_hint=zstd_frame_size(head) or 0)
    if st.st_size >= 18:  # gzip's ISIZE is the size modulo 4 GiB and lies when truncated: no size
        return Image(path, kind, None)
    raise SourceError("is too short to be a gzip file (truncated); download it again")


def _block_reader(path: Path, threads: int) -> BlockReader | None:
    """A parallel in-process decoder for a multi-block .xz file; None when anything about the file
    is unusual (then `xz`, or Python's streaming decoder, reads it and reports what is wrong)."""
    try:
        handle, read = _file_reader(path)
        with handle:
            size = os.fstat(handle.fileno()).st_size
            blocks = xz_blocks(read, size)
        if not xzblocks.usable(blocks, size):
            return None
        return BlockReader(path, blocks, workers=threads)
    except (SourceError, OSError):
        return None


class Stream:
    """The unpacked bytes of an image, read with `readinto` (or `chunks`, where the source allows).
    Raises SourceError on corrupt data."""

    def __init__(self, image: Image, threads: int | None = None):
        self.image = image
        self.proc: subprocess.Popen | None = None
        self._file = None
        self._decoder = None
        self._pending = b""
        self._eof = False
        threads = threads or os.cpu_count() or 1
        path = str(image.path)
        command = None
        if image.kind == "xz" and image.blocks > 1:
            reader = _block_reader(image.path, threads)
            if reader is not None:
                self.tool = "python-xz-blocks"
                self._file = reader
                return
        if image.kind == "xz" and shutil.which("xz"):
            command = ["xz", "-dc", f"-T{threads}", "--", path]
        elif image.kind == "gz" and (shutil.which("pigz") or shutil.which("gzip")):
            command = ["pigz", "-dc", "--", path] if shutil.which("pigz") else ["gzip", "-dc", "--", path]
        elif image.kind == "zst" and shutil.which("zstd"):
            command = ["zstd", "-dcq", "--", path]
        if command:
            self.tool = command[0]
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            try:
                import fcntl

                fcntl.fcntl(self.proc.stdout.fileno(), 1031, 1 << 20)  # F_SETPIPE_SZ: fewer wake-ups
            except (OSError, ImportError):
                pass
            self._file = self.proc.stdout
            return
        self.tool = "python"
        if image.kind == "raw":
            self._file = open(image.path, "rb", buffering=0)
        elif image.kind == "zip":
            self._zip = zipfile.ZipFile(image.path)
            self._file = self._zip.open(image.member)
        elif image.kind in ("xz", "gz"):
            import gzip
            import lzma

            self._file = (lzma.open if image.kind == "xz" else gzip.open)(image.path, "rb")
        else:
            try:
                import zstandard
            except ImportError:
                raise SourceError(
                    "is zstd-compressed and neither the `zstd` program nor the Python `zstandard` package is installed; install zstd (apt install zstd / brew install zstd)"
                ) from None
            self._raw = open(image.path, "rb")
            self._file = zstandard.ZstdDecompressor().stream_reader(self._raw, read_across_frames=True)

    def chunks(self, size: int) -> Iterator[memoryview] | None:
        """The data as read-only views of up to `size` bytes without copying, where the source can
        (block-decoded .xz); None otherwise: then use `readinto`."""
        if not isinstance(self._file, BlockReader):
            return None
        return self._chunks(self._file.chunks(size))

    @staticmethod
    def _chunks(views: Iterator[memoryview]) -> Iterator[memoryview]:
        try:
            yield from views
        except BlockError as exc:
            raise SourceError(f"{exc}; download it again") from None
        finally:
            views.close()

    def readinto(self, buf) -> int:
        """Fill `buf` as far as the data goes; 0 only at the end."""
        view = memoryview(buf)
        got = 0
        try:
            while got < len(view):
                n = self._file.readinto(view[got:])
                if not n:
                    break
                got += n
        except SourceError:
            raise
        except BlockError as exc:
            raise SourceError(f"{exc}; download it again") from None
        except (EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
            raise SourceError(f"is corrupt or truncated ({type(exc).__name__}: {exc}); download it again") from None
        except Exception as exc:  # zstandard.ZstdError, lzma.LZMAError, zlib.error: all mean bad data
            raise SourceError(f"is corrupt or truncated ({exc}); download it again") from None
        if got == 0:
            self._finish()
        return got

    def _finish(self) -> None:
        if self.proc is None or self._eof:
            return
        self._eof = True
        rc = self.proc.wait()
        if rc != 0:
            message = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
            detail = message[-1] if message else f"{self.tool} exited with {rc}"
            detail = detail.replace(str(self.image.path), "").strip(": ")
            raise SourceError(f"is corrupt or truncated ({self.tool}: {detail}); download it again")

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            for pipe in (self.proc.stdout, self.proc.stderr):
                pipe.close()
        elif self._file is not None:
            self._file.close()
            for extra in ("_zip", "_raw"):
                if hasattr(self, extra):
                    getattr(self, extra).close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
