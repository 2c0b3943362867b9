"""Fixtures for `piml flash` tests: Raspberry-Pi-OS-shaped images built from scratch (sfdisk, mkfs.vfat +
mtools, mkfs.ext4 -d: never mounted), and loop devices that are always detached again.

Tests marked `flash_root` need root and loop devices. Without root they FAIL, unless
PIML_SKIP_ROOT_TESTS=1 is set (then they are skipped).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

MiB = 1 << 20
BOOKWORM_CMDLINE = (
    "console=serial0,115200 console=tty1 root=PARTUUID=6c586e13-02 rootfstype=ext4 fsck.repair=yes "
    "rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot splash plymouth.ignore-serial-consoles\n"
)
TRIXIE_CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=6c586e13-02 rootfstype=ext4 fsck.repair=yes rootwait quiet splash\n"
CONFIG_TXT = "# For more options and information see\n# http://rptl.io/configtxt\ndtparam=audio=on\ncamera_auto_detect=1\n\n[cm4]\notg_mode=1\n\n[all]\narm_boost=1\n"
SSH_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0000000000000000000000 piml@test"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "flash_root: needs root and loop devices (losetup); fails without root unless PIML_SKIP_ROOT_TESTS=1"
    )


def pytest_runtest_setup(item):
    if item.get_closest_marker("flash_root") is None:
        return
    if os.geteuid() == 0 and shutil.which("losetup"):
        return
    if os.environ.get("PIML_SKIP_ROOT_TESTS") == "1":
        pytest.skip("needs root and losetup (PIML_SKIP_ROOT_TESTS=1)")
    pytest.fail(
        "this test needs root and losetup (run tests/flash/install-deps.sh and pytest as root), or set PIML_SKIP_ROOT_TESTS=1 to skip it"
    )


def run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], check=True, capture_output=True, text=True, **kw)


@dataclass
class BuiltImage:
    path: Path  # the raw image
    flavour: str  # bookworm | trixie | plain
    boot_start: int
    boot_size: int
    root_start: int
    size: int


def build_image(
    directory: Path,
    flavour: str = "bookworm",
    *,
    size_mib: int = 48,
    boot_mib: int = 34,
    root_mib: int = 8,
    fat: int = 32,
    name: str | None = None,
) -> BuiltImage:
    """An MBR image: 4 MiB gap, FAT `bootfs` (cmdline.txt, config.txt, a fake kernel, flavour files),
    ext4 `rootfs` with files, then empty space to `size_mib`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (name or f"{flavour}.img")
    boot_start, root_start = 4 * MiB, (4 + boot_mib) * MiB
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
    table = (
        f"label: dos\nlabel-id: 0x6c586e13\n"
        f"start={boot_start // 512}, size={boot_mib * MiB // 512}, type=c\n"
        f"start={root_start // 512}, size={root_mib * MiB // 512}, type=83\n"
    )
    run("sfdisk", "--quiet", path, input=table)

    boot = directory / f"{path.stem}.boot.part"
    boot.unlink(missing_ok=True)
    with open(boot, "wb") as f:
        f.truncate(boot_mib * MiB)
    run("mkfs.vfat", "-F", str(fat), "-n", "bootfs", "-s", "1" if fat == 32 else "4", boot)
    files = directory / f"{path.stem}.bootfiles"
    shutil.rmtree(files, ignore_errors=True)
    files.mkdir()
    (files / "cmdline.txt").write_text(BOOKWORM_CMDLINE if flavour == "bookworm" else TRIXIE_CMDLINE)
    (files / "config.txt").write_text(CONFIG_TXT)
    (files / "kernel8.img").write_bytes(os.urandom(3 * MiB + 12345))
    (files / "bcm2712-rpi-5-b.dtb").write_bytes(os.urandom(70000))
    if flavour in ("bookworm", "trixie"):
        (files / "issue.txt").write_text(f"Raspberry Pi reference 2025-11-24\nGenerated using pi-gen, {flavour}\n")
    if flavour == "trixie":
        (files / "user-data").write_text("#cloud-config\n# default: the first boot wizard runs\n")
        (files / "meta-data").write_text("instance-id: rpios-image\n")
        (files / "network-config").write_text("network:\n  version: 2\n")
    for item in sorted(files.iterdir()):
        run("mcopy", "-i", boot, item, f"::{item.name}")
    run("dd", f"if={boot}", f"of={path}", "bs=1M", f"seek={boot_start // MiB}", "conv=notrunc,fsync", "status=none")

    rootdir = directory / f"{path.stem}.rootfs"
    shutil.rmtree(rootdir, ignore_errors=True)
    (rootdir / "etc").mkdir(parents=True)
    (rootdir / "etc/hostname").write_text("raspberrypi\n")
    (rootdir / "usr/lib").mkdir(parents=True)
    (rootdir / "usr/lib/blob.bin").write_bytes(os.urandom(2 * MiB))
    (rootdir / "usr/lib/text.txt").write_text("piml test rootfs\n" * 20000)
    root = directory / f"{path.stem}.root.part"
    root.unlink(missing_ok=True)
    run("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", rootdir, root, f"{root_mib}M")
    run("dd", f"if={root}", f"of={path}", "bs=1M", f"seek={root_start // MiB}", "conv=notrunc,fsync", "status=none")
    for tmp in (boot, root):
        tmp.unlink()
    shutil.rmtree(files)
    shutil.rmtree(rootdir)
    return BuiltImage(path, flavour, boot_start, boot_mib * MiB, root_start, size_mib * MiB)


def compress(image: Path, kind: str) -> Path:
    """`image` packed as kind: raw (itself), xz (multi-block), gz, zst, zip."""
    if kind == "raw":
        return image
    if kind == "xz":
        run("xz", "-k", "-f", "-T2", "--block-size=4MiB", "-3", image)
        return image.with_name(image.name + ".xz")
    if kind == "gz":
        out = image.with_name(image.name + ".gz")
        with open(out, "wb") as f:
            subprocess.run(["gzip", "-c", "-1", str(image)], check=True, stdout=f)
        return out
    if kind == "zst":
        run("zstd", "-q", "-f", "-3", image, "-o", image.with_name(image.name + ".zst"))
        return image.with_name(image.name + ".zst")
    if kind == "zip":
        out = image.with_name(image.stem + ".zip")
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            z.write(image, image.name)
        return out
    raise ValueError(kind)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """Built once per session: {flavour: BuiltImage}."""
    base = tmp_path_factory.mktemp("images")
    return {flavour: build_image(base / flavour, flavour) for flavour in ("bookworm", "trixie", "plain")}


class Loops:
    """Loop devices made by this test, each detached at the end, also when the test fails."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.devices: list[str] = []

    def make(self, size: int, partscan: bool = False, fill: bytes | None = None) -> str:
        backing = self.directory / f"loop{len(self.devices)}.bin"
        with open(backing, "wb") as f:
            if fill:
                f.write(fill)
            f.truncate(size)
        args = ["losetup", "--find", "--show"] + (["--partscan"] if partscan else []) + [str(backing)]
        device = run(*args).stdout.strip()
        assert device.startswith("/dev/loop"), device
        self.devices.append(device)
        return device

    def detach_all(self) -> None:
        for device in reversed(self.devices):
            subprocess.run(["umount", "-q", "-R"] + [p for p in _mounts_of(device)], capture_output=True)
            subprocess.run(["losetup", "-d", device], capture_output=True)
        self.devices.clear()


def _mounts_of(device: str) -> list[str]:
    points = []
    with open("/proc/mounts") as f:
        for line in f:
            src, point = line.split()[:2]
            if src.startswith(device):
                points.append(point)
    return points


@pytest.fixture
def loops(tmp_path):
    manager = Loops(tmp_path)
    try:
        yield manager
    finally:
        manager.detach_all()


def read_fat_file(image_or_device: str | Path, offset: int, name: str) -> str | None:
    """A file of the FAT at `offset`, read with mtools (an implementation independent of piml's)."""
    result = subprocess.run(["mtype", "-i", f"{image_or_device}@@{offset}", f"::{name}"], capture_output=True)
    if result.returncode != 0:
        return None
    return result.stdout.decode()


def fat_listing(image_or_device: str | Path, offset: int) -> list[str]:
    out = run("mdir", "-b", "-i", f"{image_or_device}@@{offset}", "::").stdout
    return sorted(line.strip().removeprefix("::/") for line in out.splitlines() if line.strip())


def fsck_fat(image_or_device: str | Path, offset: int, size: int, tmp: Path) -> str:
    """fsck.fat -n on a copy of the partition; returns its output (raises when it finds problems)."""
    part = tmp / "fsck.part"
    with open(image_or_device, "rb") as src, open(part, "wb") as dst:
        src.seek(offset)
        dst.write(src.read(size))
    result = subprocess.run(["fsck.fat", "-n", str(part)], capture_output=True, text=True)
    part.unlink()
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture
def project(tmp_path):
    """A piml project with three nodes (pi1 server with a static-capable IP, pi2, cm1) and a known SSH key."""
    from piml.scaffold import init_project, parse_node_spec

    root = tmp_path / "rack"
    specs = [parse_node_spec(s) for s in ("pi1=192.168.50.21", "pi2=192.168.50.22", "cm1=cm1.lan")]
    init_project(root, specs, "ops", None, "pi5", False)
    (root / ".piml/id_ed25519.pub").write_text(SSH_PUB + "\n")
    return root
