#!/usr/bin/env python3
"""Flash the same ~3 GiB Raspberry-Pi-OS-shaped image (~1.5 GiB of data, .xz, multi-block) to the same
loop device three ways, side by side in one run, and print the ratios:

    xz -dc IMG.xz | dd of=LOOP bs=4M conv=fsync      (the classic)
    bmaptool copy IMG.xz LOOP                        (Debian's bmap-tools, with a bmap)
    piml flash IMG.xz LOOP --no-verify -y            (and once more with verify, for the total)

Goals: piml <= 0.6x bmaptool, <= 0.4x dd. Needs root, losetup, xz, bmaptool, sfdisk, mkfs.vfat, mkfs.ext4
(tests/flash/install-deps.sh). Only ever writes to the loop device it creates, and detaches it.

    sudo python benchmarks/flash_speed.py [--workdir /var/tmp/piml-bench] [--data-gib 1.5] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30


def sh(*args, **kw):
    return subprocess.run([str(a) for a in args], check=True, **kw)


def populate(root: Path, data_bytes: int) -> None:
    """A root file system's worth of real files (copied from this machine's /usr), about `data_bytes`."""
    total = 0
    for source in ("/usr/lib", "/usr/share", "/usr/bin"):
        for dirpath, _, files in os.walk(source):
            for name in files:
                src = Path(dirpath) / name
                if src.is_symlink() or not src.is_file():
                    continue
                size = src.stat().st_size
                dst = root / src.relative_to("/")
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copyfile(src, dst)
                except OSError:
                    continue
                total += size
                if total >= data_bytes:
                    return


def build(work: Path, data_gib: float) -> tuple[Path, Path, int]:
    img = work / "bench.img"
    xz = work / "bench.img.xz"
    bmap = work / "bench.bmap"
    size = 3 * GiB
    if xz.exists() and bmap.exists() and img.exists():
        return xz, bmap, img.stat().st_size
    print(f"building a {size / GiB:.0f} GiB image with ~{data_gib} GiB of files (once; kept in {work})", flush=True)
    boot_mib, start = 512, 4
    root_mib = size // MiB - start - boot_mib - 64  # leave empty space at the end, as real images do not
    with open(img, "wb") as f:
        f.truncate(size)
    sh(
        "sfdisk",
        "--quiet",
        img,
        input=(
            f"label: dos\nstart={start * 2048}, size={boot_mib * 2048}, type=c\n"
            f"start={(start + boot_mib) * 2048}, size={root_mib * 2048}, type=83\n"
        ).encode(),
    )
    boot = work / "boot.part"
    with open(boot, "wb") as f:
        f.truncate(boot_mib * MiB)
    sh("mkfs.vfat", "-F", "32", "-n", "bootfs", boot, stdout=subprocess.DEVNULL)
    (work / "cmdline.txt").write_text(
        "console=serial0,115200 console=tty1 root=PARTUUID=00000000-02 rootfstype=ext4 rootwait init=/usr/lib/raspberrypi-sys-mods/firstboot\n"
    )
    (work / "config.txt").write_text("dtparam=audio=on\n")
    (work / "issue.txt").write_text("Raspberry Pi reference 2025-11-24\n")
    (work / "kernel_2712.img").write_bytes(os.urandom(9 * MiB))
    for name in ("cmdline.txt", "config.txt", "issue.txt", "kernel_2712.img"):
        sh("mcopy", "-i", boot, work / name, f"::{name}")
    sh("dd", f"if={boot}", f"of={img}", "bs=4M", f"seek={start}", "conv=notrunc", "status=none")
    boot.unlink()
    tree = work / "rootfs"
    shutil.rmtree(tree, ignore_errors=True)
    populate(tree, int(data_gib * GiB))
    root = work / "root.part"
    sh("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", tree, root, f"{root_mib}M")
    shutil.rmtree(tree)
    sh(
        "dd",
        f"if={root}",
        f"of={img}",
        "bs=4M",
        f"seek={(start + boot_mib) // 4}",
        "conv=notrunc,sparse",
        "status=none",
    )
    root.unlink()
    print("compressing with xz -T0 -6 (multi-block, like current Raspberry Pi OS images)", flush=True)
    sh("xz", "-k", "-f", "-T0", "-6", img)
    sh("bmaptool", "create", "-o", bmap, img)
    return xz, bmap, size


def fresh(loop: str) -> None:
    """Same starting point for every tool: a discarded device and cold caches."""
    subprocess.run(["blkdiscard", loop], capture_output=True)
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(label: str, command: str, loop: str) -> float:
    fresh(loop)
    print(f"  {label:<28} ", end="", flush=True)
    started = time.monotonic()
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        print(f"FAILED\n{result.stderr}")
        raise SystemExit(1)
    print(f"{seconds:7.1f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/piml-bench"))
    parser.add_argument("--data-gib", type=float, default=1.5)
    parser.add_argument("--keep", action="store_true", help="keep the built image for the next run (default)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: it creates a loop device")
    for tool in ("losetup", "xz", "bmaptool", "sfdisk", "mkfs.vfat", "mkfs.ext4", "mcopy", "dd"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: run tests/flash/install-deps.sh")
    args.workdir.mkdir(parents=True, exist_ok=True)
    xz, bmap, size = build(args.workdir, args.data_gib)
    backing = args.workdir / "loop.bin"
    with open(backing, "wb") as f:
        f.truncate(size + 256 * MiB)
    loop = subprocess.run(
        ["losetup", "--find", "--show", str(backing)], check=True, capture_output=True, text=True
    ).stdout.strip()
    python = sys.executable
    repo = Path(__file__).resolve().parents[1]
    piml = f"PYTHONPATH={repo} {python} -m piml flash"
    try:
        print(
            f"image {xz.name}: {xz.stat().st_size / MiB:.0f} MiB compressed, {size / GiB:.1f} GiB raw; target {loop}; {os.cpu_count()} cores"
        )
        t_dd = timed(
            "xz -dc | dd bs=4M fsync", f"xz -dc {xz} | dd of={loop} bs=4M iflag=fullblock conv=fsync status=none", loop
        )
        t_bmap = timed("bmaptool copy (bmap)", f"bmaptool -q copy --bmap {bmap} {xz} {loop}", loop)
        t_piml = timed("piml flash --no-verify", f"{piml} {xz} {loop} -y --no-verify >/dev/null", loop)
        t_total = timed("piml flash (write+verify)", f"{piml} {xz} {loop} -y >/dev/null", loop)
    finally:
        subprocess.run(["losetup", "-d", loop])
        backing.unlink(missing_ok=True)
    print()
    print(f"piml / bmaptool = {t_piml / t_bmap:.2f}x   (goal <= 0.6x)")
    print(f"piml / dd       = {t_piml / t_dd:.2f}x   (goal <= 0.4x)")
    print(f"piml write+verify total = {t_total:.1f} s  ({size / MiB / t_total:.0f} MiB/s of image)")


if __name__ == "__main__":
    main()
