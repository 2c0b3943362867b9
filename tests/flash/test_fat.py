"""piml's FAT editor, checked against mtools (an independent implementation) and fsck.fat."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piml.flash.fat import FatError, FatVolume
from tests.fuzzing import examples

from .conftest import fat_listing, fsck_fat, read_fat_file, run


def make_fat(tmp: Path, fat: int, size_mib: int = 34, files: dict[str, bytes] | None = None) -> Path:
    path = tmp / f"fat{fat}.part"
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    run("mkfs.vfat", "-F", str(fat), "-s", "1" if fat == 32 else "4", path)
    for name, data in (files or {}).items():
        src = tmp / "src.bin"
        src.write_bytes(data)
        run("mcopy", "-i", path, src, f"::{name}")
    return path


def edit(path: Path, fn) -> None:
    buf = bytearray(path.read_bytes())
    fn(FatVolume(buf))
    path.write_bytes(buf)


@pytest.mark.parametrize("fat", [16, 32])
def test_replace_and_create_files_readable_by_mtools(tmp_path, fat):
    path = make_fat(
        tmp_path,
        fat,
        files={"cmdline.txt": b"console=tty1 root=/dev/mmcblk0p2\n", "kernel8.img": bytes(range(256)) * 9000},
    )
    big = bytes(range(251)) * 400  # spans many clusters

    def change(vol: FatVolume):
        assert vol.read("CMDLINE.TXT") == b"console=tty1 root=/dev/mmcblk0p2\n"
        vol.write("cmdline.txt", b"console=tty1 cgroup_enable=memory\n")
        vol.write("user-data", b"#cloud-config\n")
        vol.write("network-config", big)
        vol.write("firstrun.sh", b"#!/bin/bash\n")
        vol.write("A Long Name With Spaces And Ünïcode.txt", b"x")
        vol.write("empty", b"")

    edit(path, change)
    assert read_fat_file(path, 0, "cmdline.txt") == "console=tty1 cgroup_enable=memory\n"
    assert read_fat_file(path, 0, "user-data") == "#cloud-config\n"
    got = subprocess.run(["mtype", "-i", str(path), "::network-config"], capture_output=True, check=True).stdout
    assert got == big
    names = fat_listing(path, 0)
    assert {"cmdline.txt", "user-data", "network-config", "firstrun.sh", "kernel8.img", "empty"} <= set(names)
    assert "A Long Name With Spaces And Ünïcode.txt" in names
    fsck_fat(path, 0, path.stat().st_size, tmp_path)
    vol = FatVolume(bytearray(path.read_bytes()))
    assert vol.read("kernel8.img") == bytes(range(256)) * 9000
    assert vol.read("empty") == b""


def test_root_directory_grows_on_fat32(tmp_path):
    path = make_fat(tmp_path, 32)

    def many(vol: FatVolume):
        for i in range(40):  # 40 long names = well over one 512-byte cluster of entries
            vol.write(f"a-rather-long-file-name-number-{i:03d}.conf", f"{i}\n".encode())

    edit(path, many)
    names = fat_listing(path, 0)
    assert len([n for n in names if n.startswith("a-rather-long")]) == 40
    assert read_fat_file(path, 0, "a-rather-long-file-name-number-039.conf") == "39\n"
    fsck_fat(path, 0, path.stat().st_size, tmp_path)


def test_full_file_system_is_an_error(tmp_path):
    path = make_fat(tmp_path, 16, size_mib=16)
    buf = bytearray(path.read_bytes())
    with pytest.raises(FatError, match="full"):
        FatVolume(buf).write("huge", bytes(32 << 20))


@pytest.mark.parametrize("data", [b"", bytes(511), b"\x55\xaa" * 256, bytes(4096)])
def test_not_fat_is_an_error(data):
    with pytest.raises(FatError):
        FatVolume(bytearray(data))


NAME = st.text(
    st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="-_.~ "), min_size=1, max_size=40
).filter(lambda s: s.strip(". ") == s and s not in (".", ".."))


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(NAME, st.binary(max_size=3000), min_size=1, max_size=6, dict_class=dict))
def test_random_files_roundtrip_and_stay_consistent(tmp_path, files):
    lowered: dict[str, bytes] = {}
    for name, data in files.items():  # FAT names are case-insensitive: the last write wins
        lowered = {k: v for k, v in lowered.items() if k.lower() != name.lower()}
        lowered[name] = data
    path = make_fat(tmp_path, 32, size_mib=34)
    buf = bytearray(path.read_bytes())
    vol = FatVolume(buf)
    for name, data in files.items():
        vol.write(name, data)
    vol = FatVolume(buf)
    for name, data in lowered.items():
        assert vol.read(name) == data
    path.write_bytes(buf)
    fsck_fat(path, 0, len(buf), tmp_path)
