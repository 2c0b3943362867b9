"""Block-parallel in-process .xz decoding (piml/flash/xzblocks.py): the same bytes as `xz -dc`, a clear
error for a corrupt or truncated file, and the streaming path for anything it does not handle."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from piml.flash import sources, writer, xzblocks
from piml.flash.sources import SourceError, Stream

KiB = 1 << 10

pytestmark = pytest.mark.skipif(not shutil.which("xz"), reason="needs the xz program")


def payload(size: int, seed: int = 1) -> bytes:
    """Text-like, random and zero runs: every kind of data an image has."""
    rnd = os.urandom(size // 4)
    text = b"".join(b"line %d of a config file, seed %d\n" % (i, seed) for i in range(size // 64))
    out = (text[: size // 4] + bytes(size // 4) + rnd + text)[:size]
    return out + bytes(size - len(out))


def xz_file(tmp: Path, data: bytes, *args: str, name: str = "img.img") -> Path:
    raw = tmp / name
    raw.write_bytes(data)
    subprocess.run(["xz", "-k", "-f", "-q", *args, str(raw)], check=True)
    return raw.with_name(name + ".xz")


def xz_dc(path: Path) -> bytes:
    return subprocess.run(["xz", "-dc", str(path)], check=True, capture_output=True).stdout


def decode_all(path: Path, via_chunks: bool = True, size: int = 64 * KiB) -> tuple[str, bytes]:
    image = sources.inspect(path)
    with Stream(image) as stream:
        views = stream.chunks(size) if via_chunks else None
        if views is not None:
            return stream.tool, b"".join(bytes(v) for v in views)
        out = bytearray()
        buf = bytearray(size - 1)  # not a divisor of the block size: reads straddle blocks
        while n := stream.readinto(buf):
            out += buf[:n]
        return stream.tool, bytes(out)


@pytest.mark.parametrize("check", ["crc32", "crc64", "sha256", "none"])
@pytest.mark.parametrize("via_chunks", [True, False])
def test_block_decode_equals_xz_dc(tmp_path, check, via_chunks):
    data = payload(1000 * KiB + 123)
    packed = xz_file(tmp_path, data, "-T1", "--block-size=96KiB", f"--check={check}", "-3")
    assert sources.inspect(packed).blocks > 5
    tool, out = decode_all(packed, via_chunks)
    assert tool == "python-xz-blocks"
    assert out == xz_dc(packed) == data


def test_block_decode_of_concatenated_streams_with_padding(tmp_path):
    a = xz_file(tmp_path, payload(300 * KiB, 1), "-T1", "--block-size=64KiB", name="a.img")
    b = xz_file(tmp_path, payload(200 * KiB, 2), "-T1", "--block-size=50KiB", "--check=sha256", name="b.img")
    joined = tmp_path / "joined.img.xz"
    joined.write_bytes(a.read_bytes() + bytes(8) + b.read_bytes() + bytes(4))
    tool, out = decode_all(joined)
    assert tool == "python-xz-blocks"
    assert out == xz_dc(joined)


def test_write_image_from_blocks_matches_xz_dc(tmp_path):
    data = payload(3 * writer.CHUNK + 5000)
    packed = xz_file(tmp_path, data, "-T1", "--block-size=3MiB", "-1")
    out = tmp_path / "out.img"
    target = writer.Target(str(out), device=False)
    try:
        result = writer.write_image(Stream(sources.inspect(packed)), target)
    finally:
        target.close()
    assert result.size == len(data)
    assert out.read_bytes() == data
    digest = writer.Digest()
    digest.update(data)
    assert result.digest == digest.finish()[0]


def test_single_block_and_unusual_files_use_the_streaming_path(tmp_path):
    single = xz_file(tmp_path, payload(200 * KiB), "-T1", name="one.img")
    assert sources.inspect(single).blocks == 1
    tool, out = decode_all(single)
    assert tool == "xz" and out == xz_dc(single)
    blocks = [sources.XzBlock(12, 100, 1000, b"\x00\x02"), sources.XzBlock(112, 100, 1000, b"\x00\x02")]
    assert not xzblocks.usable(blocks)  # a check type liblzma does not verify
    assert not xzblocks.usable(blocks[:1])
    huge = [sources.XzBlock(12, 100, xzblocks.MAX_BLOCK + 1, b"\x00\x04")] * 2
    assert not xzblocks.usable(huge)


def _corrupt(packed: Path, tmp: Path, block_no: int) -> Path:
    blocks = sources.xz_blocks(sources._file_reader(packed)[1], packed.stat().st_size)
    data = bytearray(packed.read_bytes())
    block = blocks[block_no]
    middle = block.offset + block.unpadded // 2
    data[middle : middle + 16] = bytes(b ^ 0x55 for b in data[middle : middle + 16])
    bad = tmp / "bad.img.xz"
    bad.write_bytes(data)
    return bad


@pytest.mark.parametrize("via_chunks", [True, False])
def test_corrupt_block_is_a_clear_error(tmp_path, via_chunks):
    packed = xz_file(tmp_path, payload(1000 * KiB), "-T1", "--block-size=100KiB", "-3")
    bad = _corrupt(packed, tmp_path, 4)
    with pytest.raises(SourceError) as caught:
        decode_all(bad, via_chunks)
    message = str(caught.value)
    assert "corrupt" in message and "download it again" in message
    assert "block at byte" in message


def test_index_lying_about_a_block_size_is_caught(tmp_path):
    packed = xz_file(tmp_path, payload(400 * KiB), "-T1", "--block-size=100KiB", "-3")
    blocks = sources.xz_blocks(sources._file_reader(packed)[1], packed.stat().st_size)
    lying = dataclasses.replace(blocks[0], uncompressed=blocks[0].uncompressed - 1)
    reader = xzblocks.BlockReader(packed, [lying, *blocks[1:]])
    with pytest.raises(xzblocks.BlockError, match="corrupt .xz block at byte 12"):
        list(reader.chunks(KiB))


def test_truncated_file_is_a_clear_error(tmp_path):
    packed = xz_file(tmp_path, payload(1000 * KiB), "-T1", "--block-size=100KiB", "-3")
    data = packed.read_bytes()
    cut = tmp_path / "cut.img.xz"
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SourceError, match="truncated|corrupt"):
        sources.inspect(cut)
    # truncated after it was inspected (a download still being written, a copy cut short)
    cut.write_bytes(data)
    image = sources.inspect(cut)
    with Stream(image) as stream:
        assert stream.tool == "python-xz-blocks"
        os.truncate(cut, len(data) // 2)
        with pytest.raises(SourceError) as caught:
            list(stream.chunks(64 * KiB))
    assert "truncated" in str(caught.value) and "download it again" in str(caught.value)


def test_stopping_early_stops_the_workers(tmp_path):
    packed = xz_file(tmp_path, payload(2000 * KiB), "-T1", "--block-size=100KiB", "-3")
    before = {t.name for t in threading.enumerate()}
    stream = Stream(sources.inspect(packed))
    views = stream.chunks(16 * KiB)
    first = bytes(next(views))
    views.close()
    stream.close()
    assert first == xz_dc(packed)[: 16 * KiB]
    assert not [t for t in threading.enumerate() if t.name.startswith("piml-xz") and t.name not in before]


def test_wrapped_block_is_a_valid_xz_stream(tmp_path):
    packed = xz_file(tmp_path, payload(300 * KiB), "-T1", "--block-size=64KiB", "--check=crc32", "-3")
    blocks = sources.xz_blocks(sources._file_reader(packed)[1], packed.stat().st_size)
    data = packed.read_bytes()
    block = blocks[1]
    stored = data[block.offset : block.offset + (block.unpadded + 3) // 4 * 4]
    alone = tmp_path / "alone.xz"
    alone.write_bytes(xzblocks.wrap(block.stream_flags, stored, block.unpadded, block.uncompressed))
    full = xz_dc(packed)
    start = sum(b.uncompressed for b in blocks[:1])
    assert xz_dc(alone) == full[start : start + block.uncompressed]
    assert hashlib.sha256(xz_dc(alone)).digest() == hashlib.sha256(full[start : start + block.uncompressed]).digest()
