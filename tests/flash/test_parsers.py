"""Fuzzing the parsers piml flash runs on untrusted input: image type detection, partition tables,
.xz indexes, zstd headers, cmdline.txt editing, first-boot detection."""

from __future__ import annotations

import lzma
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from piml.flash import firstboot, partitions, sources
from piml.flash.sources import SourceError
from tests.fuzzing import examples

NAMES = st.sampled_from(["a.img", "a.img.xz", "a.img.gz", "a.img.zst", "a.zip", "a.bin", "noext", "A.IMG.XZ", "x.7z"])
MAGICS = st.sampled_from([b"", b"\xfd7zXZ\x00", b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"PK\x03\x04", b"BZh", b"\x55\xaa"])


@given(NAMES, MAGICS, st.binary(max_size=64))
def test_detect_kind_only_raises_source_error(name, magic, rest):
    try:
        kind = sources.detect_kind(name, magic + rest)
    except SourceError as exc:
        assert str(exc)
        return
    assert kind in sources.KINDS


def test_detect_kind_content_wins_and_lies_are_caught():
    assert sources.detect_kind("image.img", b"\xfd7zXZ\x00rest") == "xz"
    assert sources.detect_kind("image.img.xz", b"\x28\xb5\x2f\xfd....") == "zst"
    assert sources.detect_kind("image.img", bytes(512)) == "raw"
    with pytest.raises(SourceError, match="named .xz but is not"):
        sources.detect_kind("image.img.xz", b"<html>not found</html>")
    with pytest.raises(SourceError, match="bzip2"):
        sources.detect_kind("image.img.bz2", b"BZh91AY")


@given(st.binary(max_size=4096))
def test_partitions_never_raise(data):
    head = bytearray(data.ljust(1024, b"\0"))
    head[510:512] = b"\x55\xaa"
    for part in partitions.partitions(bytes(head)):
        assert part.start >= 0 and part.size > 0


@given(
    st.lists(
        st.tuples(st.integers(0, 255), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)), min_size=4, max_size=4
    )
)
def test_mbr_entries_roundtrip(entries):
    head = bytearray(partitions.HEADER_BYTES)
    for i, (ptype, lba, count) in enumerate(entries):
        head[446 + 16 * i + 4] = ptype
        head[446 + 16 * i + 8 : 446 + 16 * i + 16] = struct.pack("<II", lba, count)
    head[510:512] = b"\x55\xaa"
    found = partitions.partitions(bytes(head))
    if any(p == 0xEE for p, _, _ in entries):
        return
    expected = [
        (i + 1, lba * 512, count * 512)
        for i, (p, lba, count) in enumerate(entries)
        if p not in (0, 0x05, 0x0F, 0x85) and lba and count
    ]
    assert [(p.index, p.start, p.size) for p in found] == expected


def _reader(data: bytes):
    return lambda offset, size: data[offset : offset + size] if offset >= 0 else b""


@given(st.binary(min_size=0, max_size=300))
def test_xz_index_parser_only_raises_source_error(tail):
    data = b"\xfd7zXZ\x00\x00\x04" + tail
    try:
        blocks = sources.xz_blocks(_reader(data), len(data))
    except SourceError:
        return
    assert all(b.uncompressed >= 0 for b in blocks)


@settings(max_examples=examples(25), deadline=None)
@given(st.binary(min_size=1, max_size=5000), st.integers(1, 6))
def test_xz_index_sizes_match_real_files_and_truncation_is_caught(payload, parts):
    data = b"".join(lzma.compress(payload * k) for k in range(1, parts + 1))  # concatenated streams
    blocks = sources.xz_blocks(_reader(data), len(data))
    assert sum(b.uncompressed for b in blocks) == sum(len(payload) * k for k in range(1, parts + 1))
    with pytest.raises(SourceError):
        cut = data[:-7]
        sources.xz_blocks(_reader(cut), len(cut))


@given(st.binary(max_size=32))
def test_zstd_frame_size_never_raises(data):
    sources.zstd_frame_size(b"\x28\xb5\x2f\xfd" + data)


def test_zstd_frame_size_of_a_real_frame():
    zstd = pytest.importorskip("zstandard")
    for n in (0, 1, 255, 256, 65791, 70000, 5 << 20):
        assert sources.zstd_frame_size(zstd.ZstdCompressor().compress(b"x" * n)) == n


TOKEN = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)
ADD = list(firstboot.CGROUP_FLAGS) + list(firstboot.FIRSTRUN_FLAGS)


@given(st.lists(TOKEN, max_size=15), st.sampled_from(["", "\n", "\r\n", "\nsecond line\n", "  \n"]), st.booleans())
def test_edit_cmdline_keeps_one_line_and_adds_once(tokens, ending, with_firstrun):
    text = " ".join(tokens) + ending
    add = ADD if with_firstrun else list(firstboot.CGROUP_FLAGS)
    out = firstboot.edit_cmdline(text, add)
    assert out.endswith("\n") and out.count("\n") == 1 and "\r" not in out
    words = out.split()
    for token in add:
        assert words.count(token) == 1
    kept = [
        t for t in tokens if t.split("=", 1)[0] not in {a.split("=", 1)[0] for a in add if a.startswith("systemd.")}
    ]
    assert all(t in words for t in kept)
    if with_firstrun:  # systemd.run* last, so firstrun.sh's `sed 's| systemd.run.*||'` keeps everything else
        cut = out.split(" systemd.run", 1)[0].split()
        assert all(t in cut for t in kept + list(firstboot.CGROUP_FLAGS))
    assert firstboot.edit_cmdline(out, add) == out  # idempotent


@given(
    st.lists(
        st.sampled_from(["cmdline.txt", "config.txt", "user-data", "META-DATA", "network-config", "issue.txt", "x"]),
        max_size=6,
    ),
    st.one_of(st.none(), st.text(max_size=80)),
    st.one_of(st.none(), st.text(max_size=80)),
)
def test_detect_mechanism(names, cmdline, issue):
    result = firstboot.detect(names, cmdline, issue)
    if any(n.lower() in firstboot.CLOUD_FILES for n in names):
        assert result == firstboot.CLOUD_INIT
    assert result in (None, *firstboot.MECHANISMS)


def test_edit_config_adds_kernel8_once():
    text = "dtparam=audio=on\n[cm4]\notg_mode=1"
    out = firstboot.edit_config(text, True)
    assert out.endswith("[pi5]\nkernel=kernel8.img\n[all]\n")
    assert firstboot.edit_config(out, True) == out
    assert firstboot.edit_config(text, False) == text
