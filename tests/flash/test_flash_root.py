"""`piml flash` end to end, as root, onto loop devices this test creates (and always detaches)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from piml.commands.flash import Options
from piml.commands.flash import run as flash_run
from piml.errors import InputError, PimlError

from .conftest import SSH_PUB, MiB, compress, fat_listing, fsck_fat, read_fat_file

pytestmark = pytest.mark.flash_root


def piml(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "piml", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=300,
    )


def same_bytes(a: str | Path, b: str | Path, length: int, offset: int = 0) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        fa.seek(offset)
        fb.seek(offset)
        left = length
        while left:
            n = min(left, 4 * MiB)
            if fa.read(n) != fb.read(n):
                return False
            left -= n
    return True


@pytest.mark.parametrize("kind", ["raw", "xz", "gz", "zst", "zip"])
def test_plain_flash_reads_back_identical(images, loops, kind):
    img = images["bookworm"]
    packed = compress(img.path, kind)
    dev = loops.make(img.size + 8 * MiB, fill=os.urandom(MiB) * 4)  # old data that must not survive
    result = piml("flash", packed, dev, "-y")
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout
    assert same_bytes(img.path, dev, img.size)
    with open(dev, "rb") as f:  # the stale last MiB (a backup GPT would live there) is wiped
        f.seek(img.size + 7 * MiB)
        assert f.read(MiB) == bytes(MiB)


@pytest.mark.parametrize("flavour,kind", [("bookworm", "xz"), ("bookworm", "raw"), ("trixie", "zst"), ("trixie", "gz")])
def test_node_flash_writes_exactly_the_nodes_settings(images, loops, project, flavour, kind, tmp_path):
    img = images[flavour]
    packed = compress(img.path, kind)
    dev = loops.make(img.size)
    result = piml("flash", packed, dev, "--node", "pi1", "-y", cwd=project)
    assert result.returncode == 0, result.stderr
    # outside the boot partition, the disk is the image
    assert same_bytes(img.path, dev, img.boot_start)
    assert same_bytes(img.path, dev, img.size - img.root_start, offset=img.root_start)
    cmdline = read_fat_file(dev, img.boot_start, "cmdline.txt")
    assert cmdline.count("\n") == 1 and cmdline.endswith("\n")
    assert "cgroup_enable=memory" in cmdline.split() and "cgroup_memory=1" in cmdline.split()
    config = read_fat_file(dev, img.boot_start, "config.txt")
    assert "kernel=kernel8.img" not in config  # a pi5 running Redis: 16 KB pages are fine (pi5_4k_pages: auto)
    names = fat_listing(dev, img.boot_start)
    if flavour == "bookworm":
        assert cmdline.rstrip().endswith(
            "systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot systemd.unit=kernel-command-line.target"
        )
        script = read_fat_file(dev, img.boot_start, "firstrun.sh")
        assert "set_hostname pi1" in script and SSH_PUB in script and "userconf ops" in script
        assert "user-data" not in names
    else:
        assert "systemd.run" not in cmdline
        user_data = read_fat_file(dev, img.boot_start, "user-data")
        assert 'hostname: "pi1"' in user_data and SSH_PUB in user_data and "ssh_pwauth: false" in user_data
        assert "pi1" in read_fat_file(dev, img.boot_start, "meta-data")
        assert "dhcp4: true" in read_fat_file(dev, img.boot_start, "network-config")
        assert "firstrun.sh" not in names
    fsck_fat(dev, img.boot_start, img.boot_size, tmp_path)


def test_static_address_and_wifi_from_piml_yaml(images, loops, project, tmp_path):
    (project / "piml.yaml").write_text(
        "flash:\n  wifi_country: DE\n  wifi_ssid: Lab Net\n  gateway: 192.168.50.1\n  dns: [192.168.50.1]\n  timezone: Europe/Berlin\n"
    )
    secret = "s3cret passphrase never shown"
    img = images["trixie"]
    dev = loops.make(img.size)
    result = piml("flash", img.path, dev, "-n", "pi2", "-y", cwd=project, env={"PIML_WIFI_PASSPHRASE": secret})
    assert result.returncode == 0, result.stderr
    assert secret not in result.stdout + result.stderr
    net = read_fat_file(dev, img.boot_start, "network-config")
    assert '"192.168.50.22/24"' in net and "Lab Net" in net and secret not in net
    assert "Europe/Berlin" in read_fat_file(dev, img.boot_start, "user-data")
    # without the passphrase and without a terminal: one clear line, nothing written
    result = piml("flash", img.path, dev, "-n", "pi2", "-y", cwd=project, env={"PIML_WIFI_PASSPHRASE": ""})
    assert (
        result.returncode == 2
        and "PIML_WIFI_PASSPHRASE" in result.stderr
        and len(result.stderr.strip().splitlines()) == 1
    )


def test_output_file_and_all_nodes(images, project, tmp_path):
    img = images["bookworm"]
    packed = compress(img.path, "xz")
    one = tmp_path / "pi2.img"
    result = piml("flash", packed, "--output", one, "--node", "pi2", cwd=project)
    assert result.returncode == 0, result.stderr
    assert one.stat().st_size == img.size
    assert "set_hostname pi2" in read_fat_file(one, img.boot_start, "firstrun.sh")
    assert os.stat(one).st_blocks * 512 < img.size  # zeros became holes
    out = tmp_path / "all"
    result = piml("flash", packed, "--all", "--output", out, cwd=project)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["cm1.img", "pi1.img", "pi2.img"]
    for name in ("pi1", "pi2", "cm1"):
        assert f"set_hostname {name}" in read_fat_file(out / f"{name}.img", img.boot_start, "firstrun.sh")
    # all are pi5 in this project, and none asks for 4 KB pages (pi5_4k_pages: auto)
    assert "kernel=kernel8.img" not in read_fat_file(out / "cm1.img", img.boot_start, "config.txt")


def test_unknown_image_names_the_mechanisms(images, project, tmp_path):
    result = piml("flash", images["plain"].path, "--output", tmp_path / "x.img", "--node", "pi1", cwd=project)
    assert result.returncode == 2
    assert "cloud-init NoCloud" in result.stderr and "firstrun" in result.stderr
    assert not (tmp_path / "x.img").exists()


def test_refuses_mounted_unless_unmount(images, loops, tmp_path):
    img = images["bookworm"]
    # A file system on a partition of the loop device when the kernel makes partitions for it (it does not in
    # every VM: then the whole device carries the file system, which the same check must catch).
    dev = loops.make(img.size, partscan=True, fill=img.path.read_bytes())
    point = tmp_path / "mnt"
    point.mkdir()
    sys_dev = Path(f"/sys/class/block/{Path(dev).name}p2/dev")
    for _ in range(20):
        if sys_dev.exists():
            break
        time.sleep(0.1)
    if sys_dev.exists():
        major, minor = map(int, sys_dev.read_text().split(":"))
        node = tmp_path / f"{Path(dev).name}p2"  # no udev here: make the partition's node ourselves, outside /dev
        os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
    else:
        subprocess.run(["mkfs.ext4", "-q", "-F", dev], check=True, capture_output=True)
        node = dev
    subprocess.run(["mount", "-t", "ext4", node, point], check=True)
    result = piml("flash", img.path, dev, "-y")
    assert result.returncode == 2
    assert "mounted partitions" in result.stderr and "--unmount" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = piml("flash", img.path, dev, "-y", "--unmount")
    assert result.returncode == 0, result.stderr
    assert not os.path.ismount(point)


def test_refuses_too_small_without_writing(images, loops):
    img = images["bookworm"]
    marker = b"untouched" * 1000
    dev = loops.make(img.size - 8 * MiB, fill=marker)
    for packed in (img.path, compress(img.path, "gz")):  # raw: size known; gz: found from the partition table
        result = piml("flash", packed, dev, "-y")
        assert result.returncode == 2, result.stderr
        assert "too small" in result.stderr
        with open(dev, "rb") as f:
            assert f.read(len(marker)) == marker


def test_refuses_the_system_disk(images, monkeypatch):
    from piml.flash import disks, writer

    root = disks.system_disk_names()
    assert root, "the running system's disk must be found"
    system = [d for d in disks.parse_disks(disks.run_lsblk(), root) if d.system and d.type == "disk"]
    assert system
    monkeypatch.setattr(writer, "Target", lambda *a, **k: pytest.fail("must not open the system disk"))
    with pytest.raises(InputError, match="holds the running system"):
        flash_run(Options(image=str(images["bookworm"].path), device=system[0].path, yes=True))


def test_interrupted_flash_reports_and_rerun_succeeds(images, loops, monkeypatch):
    from piml.flash import writer

    img = images["bookworm"]
    dev = loops.make(img.size, fill=img.path.read_bytes()[:MiB])  # an old, valid partition table
    real_write = writer.Target.write
    calls = {"n": 0}

    def flaky(self, offset, data):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_write(self, offset, data)

    monkeypatch.setattr(writer.Target, "write", flaky)
    with pytest.raises(PimlError) as info:
        flash_run(Options(image=str(compress(img.path, "xz")), device=dev, yes=True))
    assert info.value.exit_code == 130
    assert "interrupted" in str(info.value) and "run the same command again" in str(info.value)
    with open(dev, "rb") as f:
        assert f.read(MiB) == bytes(MiB)  # no partition table: the card cannot half-boot
    monkeypatch.setattr(writer.Target, "write", real_write)
    flash_run(Options(image=str(compress(img.path, "xz")), device=dev, yes=True))
    assert same_bytes(img.path, dev, img.size)


def test_unplugged_disk_reports(images, loops, monkeypatch):
    from piml.flash import writer

    img = images["bookworm"]
    dev = loops.make(img.size)
    calls = {"n": 0}
    real = os.pwrite

    def dying(fd, data, offset):
        calls["n"] += 1
        if calls["n"] > 4:
            raise OSError(19, "No such device")
        return real(fd, data, offset)

    monkeypatch.setattr(writer.os, "pwrite", dying)
    with pytest.raises(PimlError) as info:
        flash_run(Options(image=str(img.path), device=dev, yes=True))
    assert info.value.exit_code == 1 and "unplugged" in str(info.value)


def test_verify_catches_a_bad_disk(images, loops, monkeypatch):
    from piml.flash import verify as verify_mod

    img = images["bookworm"]
    dev = loops.make(img.size)
    real = verify_mod.os.preadv

    def corrupting(fd, buffers, offset):
        n = real(fd, buffers, offset)
        if offset <= 40 * MiB < offset + n:
            buffers[0][40 * MiB - offset] ^= 0xFF
        return n

    monkeypatch.setattr(verify_mod.os, "preadv", corrupting)
    with pytest.raises(PimlError, match="reads back different data from 0"):
        flash_run(Options(image=str(img.path), device=dev, yes=True))


@pytest.mark.parametrize(
    "kind,damage", [("xz", "truncate"), ("gz", "truncate"), ("zst", "corrupt"), ("zip", "truncate"), ("xz", "corrupt")]
)
def test_corrupt_or_truncated_archive_is_a_clear_error(images, loops, tmp_path, kind, damage):
    img = images["bookworm"]
    packed = compress(img.path, kind)
    data = bytearray(packed.read_bytes())
    if damage == "truncate":
        data = data[: len(data) * 2 // 3]
    else:
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(64)
    bad = tmp_path / f"bad{packed.name}"
    bad.write_bytes(data)
    dev = loops.make(img.size)
    result = piml("flash", bad, dev, "-y")
    assert result.returncode in (1, 2), result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert ("corrupt" in line or "truncated" in line) and "download it again" in line


def test_zero_blocks_are_left_to_the_kernel(images, loops, tmp_path):
    from piml.flash import writer
    from piml.flash.sources import Stream, inspect

    img = images["bookworm"]
    dev = loops.make(img.size, fill=os.urandom(img.size))  # garbage where the image has zeros
    target = writer.Target(dev, device=True)
    try:
        result = writer.write_image(Stream(inspect(img.path)), target)
    finally:
        target.close()
    assert result.zero_method == "punch" and result.zeroed > img.size // 2
    assert same_bytes(img.path, dev, img.size)


def test_direct_writes_and_unaligned_pieces(images, loops, tmp_path, monkeypatch):
    """A disk is written with O_DIRECT; pieces not aligned to its logical block (an .xz whose blocks end at
    odd offsets, an image whose size is no multiple of 512) go through the page cache. Both kinds of write
    happen here, and the disk reads back byte for byte."""
    from piml.flash import writer
    from piml.flash.sources import Stream, inspect

    img = images["bookworm"]
    odd = tmp_path / "odd.img"
    with open(img.path, "rb") as src, open(odd, "wb") as dst:
        while chunk := src.read(4 * MiB):
            dst.write(chunk)
        dst.write(os.urandom(777))
    size = img.size + 777
    subprocess.run(["xz", "-k", "-f", "-T2", "--block-size=1000003", "-1", str(odd)], check=True)
    dev = loops.make(size + MiB - 777, fill=os.urandom(8 * MiB))
    modes = []
    real = writer.Target._set_direct
    monkeypatch.setattr(writer.Target, "_set_direct", lambda self, on: (modes.append(on), real(self, on)))
    target = writer.Target(dev, device=True)
    try:
        assert target.direct and target.block >= 512
        result = writer.write_image(Stream(inspect(tmp_path / "odd.img.xz")), target)
    finally:
        target.close()
    assert result.size == size
    assert True in modes and False in modes
    assert same_bytes(odd, dev, size)
