"""Which disks can be flashed, and the safety checks before one is: never the system disk, never a
mounted one (unless asked to unmount), never a fixed disk (unless allowed), never one too small."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from piml.errors import InputError, Problem

LSBLK_COLUMNS = "NAME,PATH,KNAME,PKNAME,TYPE,SIZE,MODEL,VENDOR,SERIAL,TRAN,RM,HOTPLUG,RO,MOUNTPOINTS,FSTYPE,LABEL"
SYSTEM_MOUNTS = ("/", "/boot", "/boot/efi", "/boot/firmware", "/usr", "/var", "/home", "/etc")
REMOVABLE_TRANSPORTS = ("usb", "mmc", "ieee1394", "firewire")


@dataclass
class Disk:
    path: str  # /dev/sdb
    name: str  # sdb
    size: int  # bytes
    model: str
    transport: str  # usb, mmc, nvme, sata, loop, ...
    removable: bool
    read_only: bool
    type: str  # disk | loop
    mounts: list[str] = field(default_factory=list)  # mount points of the disk and everything on it
    mounted_devices: list[str] = field(default_factory=list)  # the devices those are mounted from
    system: bool = False  # holds the running system

    def describe(self) -> str:
        return f"{self.path} ({self.model or 'unknown model'}, {human_size(self.size)}, {self.transport or 'unknown transport'})"

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "size": self.size,
            "model": self.model,
            "transport": self.transport,
            "removable": self.removable,
            "read_only": self.read_only,
            "mounts": self.mounts,
            "system": self.system,
        }


def human_size(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def run_lsblk(devices: list[str] | None = None) -> dict:
    try:
        out = subprocess.run(
            ["lsblk", "--json", "-b", "-o", LSBLK_COLUMNS, *(devices or [])], check=True, capture_output=True, text=True
        ).stdout
    except FileNotFoundError:
        raise InputError(
            Problem(
                "piml flash",
                "lsblk is not installed",
                "install util-linux (apt install util-linux); listing and flashing disks needs Linux",
            )
        ) from None
    except subprocess.CalledProcessError as exc:
        raise InputError(
            Problem("piml flash", f"lsblk failed: {exc.stderr.strip()}", "check the device path")
        ) from None
    return json.loads(out)


def _mounts_below(node: dict) -> tuple[list[str], list[str], bool]:
    mounts: list[str] = []
    devices: list[str] = []
    swap = False
    for point in node.get("mountpoints") or []:
        if point:
            mounts.append(point)
            devices.append(node.get("path") or "")
            swap |= point == "[SWAP]"
    for child in node.get("children") or []:
        m, d, s = _mounts_below(child)
        mounts += m
        devices += d
        swap |= s
    return mounts, devices, swap


def system_disk_names() -> set[str]:
    """Kernel names of the disks under `/` (and /usr, /boot): through partitions, LVM and dm-crypt."""
    names: set[str] = set()
    for mount in ("/", "/usr", "/boot", "/boot/firmware", "/boot/efi"):
        try:
            dev = os.stat(mount).st_dev
        except OSError:
            continue
        names |= _disks_of(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    return names


def _disks_of(sys_path: str, depth: int = 0) -> set[str]:
    path = Path(sys_path)
    if depth > 8 or not path.exists():
        return set()
    real = path.resolve()
    slaves = real / "slaves"
    if slaves.is_dir() and any(slaves.iterdir()):
        result: set[str] = set()
        for slave in slaves.iterdir():
            result |= _disks_of(str(slave), depth + 1)
        return result
    if (real / "partition").exists():
        return {real.parent.name}
    return {real.name}


def parse_disks(data: dict, system_names: set[str]) -> list[Disk]:
    """Disks from `lsblk --json -b -o LSBLK_COLUMNS` output. Pure, so it is tested on captured output."""
    disks = []
    for node in data.get("blockdevices") or []:
        if node.get("type") not in ("disk", "loop"):
            continue
        name = node.get("name") or node.get("kname") or ""
        if name.startswith(("zram", "ram", "sr", "fd")):
            continue
        if node.get("type") == "loop" and not int(node.get("size") or 0):
            continue  # unused loop device
        mounts, devices, swap = _mounts_below(node)
        transport = node.get("tran") or ("loop" if node.get("type") == "loop" else "")
        if not transport and name.startswith("mmcblk"):
            transport = "mmc"
        if not transport and name.startswith("nvme"):
            transport = "nvme"
        system = name in system_names or swap or any(m in SYSTEM_MOUNTS for m in mounts)
        disks.append(
            Disk(
                path=node.get("path") or f"/dev/{name}",
                name=name,
                size=int(node.get("size") or 0),
                model=" ".join(x for x in ((node.get("vendor") or "").strip(), (node.get("model") or "").strip()) if x),
                transport=transport,
                removable=_flag(node.get("rm")) or _flag(node.get("hotplug")) or transport in REMOVABLE_TRANSPORTS,
                read_only=_flag(node.get("ro")),
                type=node.get("type") or "disk",
                mounts=mounts,
                mounted_devices=devices,
                system=system,
            )
        )
    return disks


def _flag(value) -> bool:
    return value in (True, 1, "1", "true")


def list_disks(include_loop: bool = False) -> list[Disk]:
    disks = parse_disks(run_lsblk(), system_disk_names())
    return [d for d in disks if include_loop or d.type != "loop"]


def find_disk(device: str) -> Disk:
    """The disk at `device`, or an InputError that says what is wrong with the path."""
    where = device
    try:
        st = os.stat(device)
    except FileNotFoundError:
        raise InputError(Problem(where, "no such device", "see the candidates with `piml flash --list`")) from None
    if not stat.S_ISBLK(st.st_mode):
        raise InputError(
            Problem(
                where,
                "is not a block device",
                "name a whole disk such as /dev/sdb (see `piml flash --list`), or write a file with --output",
            )
        )
    if Path(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/partition").exists():
        raise InputError(
            Problem(
                where, "is a partition, not a whole disk", "name the disk it is on, e.g. /dev/sdb rather than /dev/sdb1"
            )
        )
    real = os.path.realpath(device)
    for disk in parse_disks(run_lsblk([real]), system_disk_names()):
        return disk
    raise InputError(Problem(where, "lsblk does not know this device", "see the candidates with `piml flash --list`"))


def check_target(disk: Disk, image_size: int, *, unmount: bool, allow_fixed: bool) -> None:
    """Refuse the unsafe: raises InputError (exit 2) with the reason and the fix. Writes nothing."""
    where = disk.path
    if disk.system:
        raise InputError(
            Problem(
                where,
                f"holds the running system ({', '.join(disk.mounts) or 'root file system'})",
                "pick another disk: see `piml flash --list`",
            )
        )
    if disk.read_only:
        raise InputError(
            Problem(where, "is read-only", "slide the card's write-protect switch to unlocked, or pick another disk")
        )
    if not disk.removable and disk.type != "loop" and not allow_fixed:
        raise InputError(
            Problem(
                where,
                f"is a fixed disk ({disk.model or 'unknown model'}, {disk.transport or 'internal'}), not removable",
                "check it is the right one, then pass --allow-fixed",
            )
        )
    if disk.size and image_size > disk.size:
        raise InputError(
            Problem(
                where,
                f"is too small: {human_size(disk.size)} for an image of {human_size(image_size)}",
                "use a larger card",
            )
        )
    if disk.mounts and not unmount:
        raise InputError(
            Problem(
                where,
                f"has mounted partitions ({', '.join(disk.mounts)})",
                "unmount them, or pass --unmount to let piml do it",
            )
        )


def unmount_all(disk: Disk) -> None:
    """Unmount every file system on `disk` (deepest first). Raises InputError when one stays busy."""
    for point in sorted({m for m in disk.mounts if m and m != "[SWAP]"}, key=len, reverse=True):
        result = subprocess.run(["umount", point], capture_output=True, text=True)
        if result.returncode != 0:
            raise InputError(
                Problem(
                    disk.path,
                    f"cannot unmount {point}: {result.stderr.strip()}",
                    "close the programs using it (see `fuser -vm " + point + "`) and try again",
                )
            )
