"""One pure parser per fact: section text in, typed value out.

Each parser takes the text of its section (possibly empty: the file or command was missing on the
node) and returns a value, None meaning "unknown". On text it cannot make sense of it raises
ValueError with a short reason; `parse_facts` turns that into a note and a None.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import shlex
from functools import cache
from types import ModuleType

from piml.facts.values import RootMount, ServiceState, Throttled
from piml.paths import playbooks_dir

KIB = 1024
MIB = 1024 * 1024


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _keyvalues(text: str) -> dict[str, str]:
    """`key=value` lines; the first occurrence of a key wins."""
    result: dict[str, str] = {}
    for line in _lines(text):
        key, sep, value = line.partition("=")
        if sep and key not in result:
            result[key.strip()] = value.strip()
    return result


def _int(text: str, what: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"{what} is not a number: {text.strip()[:40]!r}") from None


def _digits(text: str) -> bool:
    """ASCII digits only (str.isdigit() also takes "²", which int() refuses), and not absurdly long."""
    return re.fullmatch(r"[0-9]{1,30}", text) is not None


def _first_line(text: str) -> str | None:
    lines = _lines(text)
    return lines[0] if lines else None


# --- identity -------------------------------------------------------------------------------------


def parse_hostname(text: str) -> str | None:
    return _first_line(text)


def normalise_model(raw: str) -> str:
    """pi5 | cm4 | other, from a device-tree model string."""
    if re.match(r"Raspberry Pi 5 Model\b", raw):
        return "pi5"
    if re.match(r"Raspberry Pi Compute Module 4\b", raw):  # not "4S" (a CM3-style board)
        return "cm4"
    return "other"


def parse_model(text: str) -> tuple[str, str | None]:
    """(pi5 | cm4 | other, the raw model string); no device tree (x86, a VM) is ("other", None)."""
    raw = " ".join(text.replace("\x00", "").split())
    return (normalise_model(raw), raw) if raw else ("other", None)


ARCH_NAMES = {"aarch64": "arm64", "arm64": "arm64", "aarch64_be": "arm64", "x86_64": "amd64", "amd64": "amd64"}


def normalise_arch(machine: str) -> str:
    """`uname -m` as the Kubernetes/Go architecture name: arm64 | amd64 | the raw value (armv7l ...)."""
    return ARCH_NAMES.get(machine, machine)


def parse_arch(text: str) -> tuple[str | None, str | None]:
    """(arm64 | amd64 | raw, the raw `uname -m`)."""
    machine = _first_line(text)
    return (normalise_arch(machine), machine) if machine else (None, None)


def parse_kernel(text: str) -> str | None:
    return _first_line(text)


def parse_os_release(text: str) -> dict[str, str]:
    """os-release(5): KEY=value lines, the value shell-quoted or not. Comments and junk are skipped."""
    result: dict[str, str] = {}
    for line in _lines(text):
        key, sep, value = line.partition("=")
        if not sep or line.startswith("#") or not re.fullmatch(r"[A-Z0-9_]+", key):
            continue
        try:
            words = shlex.split(value, posix=True)
            result[key] = " ".join(words)
        except ValueError:  # an unbalanced quote: take it as written
            result[key] = value.strip("\"'")
    return result


# --- capacity -------------------------------------------------------------------------------------


def cpu_list_count(cpus: str) -> int:
    """How many CPUs a kernel CPU list names: "0-3" -> 4, "0,2-3" -> 3."""
    count = 0
    for part in cpus.strip().split(","):
        low, dash, high = part.partition("-")
        first = _int(low, "CPU number")
        last = _int(high, "CPU number") if dash else first
        if first < 0 or last < first:
            raise ValueError(f"bad CPU range {part!r}")
        count += last - first + 1
    return count


def parse_cpus(text: str) -> int | None:
    """`online=0-3` (/sys/devices/system/cpu/online) or `count=4` (getconf _NPROCESSORS_ONLN)."""
    values = _keyvalues(text)
    if values.get("online"):
        return cpu_list_count(values["online"])
    if values.get("count"):
        count = _int(values["count"], "CPU count")
        if count < 1:
            raise ValueError(f"CPU count {count}")
        return count
    return None


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo as {field: kB}; lines without a number are skipped."""
    result: dict[str, int] = {}
    for line in _lines(text):
        key, sep, rest = line.partition(":")
        words = rest.split()
        if sep and words and _digits(words[0]):
            result[key.strip()] = int(words[0])
    return result


def parse_pagesize(text: str) -> int | None:
    line = _first_line(text)
    if line is None:
        return None
    size = _int(line, "page size")
    if size <= 0 or size & (size - 1):
        raise ValueError(f"page size {size} is not a power of two")
    return size


# --- root filesystem and boot device --------------------------------------------------------------


def _unescape_mount(field: str) -> str:
    """Mount table fields escape space, tab, newline and backslash as octal (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo_line(line: str) -> tuple[str, str] | None:
    """(source, fstype) of a /proc/self/mountinfo line, or None when it is not one."""
    left, sep, right = line.partition(" - ")
    fields = right.split()
    if not sep or len(left.split()) < 5 or len(fields) < 2:
        return None
    return _unescape_mount(fields[1]), fields[0]


def parse_rootfs(text: str) -> RootMount | None:
    """The `rootfs` section: `mount=` (a mountinfo line), then `sysfs=`, `disk=`, `mmc_type=` for it.
    Several mounts can sit on `/`; the last one is the one in effect."""
    groups: list[dict[str, str]] = []
    for line in _lines(text):
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "mount":
            groups.append({"mount": value})
        elif groups and key in ("sysfs", "disk", "mmc_type"):
            groups[-1].setdefault(key, value.strip())
    if not groups:
        return None
    last = groups[-1]
    parsed = parse_mountinfo_line(last["mount"])
    if parsed is None:
        raise ValueError(f"cannot read the mount line {last['mount'][:60]!r}")
    source, fstype = parsed
    return RootMount(
        source=source,
        fstype=fstype,
        sysfs=last.get("sysfs") or None,
        disk=last.get("disk") or None,
        mmc_type=last.get("mmc_type") or None,
    )


def parse_df(text: str) -> tuple[str, int, int] | None:
    """`df -P` for `/`: (source, size bytes, available bytes). The header gives the block size."""
    lines = _lines(text)
    if not lines:
        return None
    header = re.search(r"\b(\d+)([KkMm]?)-blocks\b", lines[0])
    if header is None:
        raise ValueError(f"no block size in the df header {lines[0][:60]!r}")
    unit = int(header.group(1)) * {"": 1, "k": KIB, "m": MIB}[header.group(2).lower()]
    for line in reversed(lines[1:]):
        words = line.split()
        # Filesystem, size, used, available, capacity, mounted on; the source may hold spaces.
        if len(words) >= 6 and all(_digits(w) for w in words[-5:-2]) and words[-2].endswith("%"):
            return " ".join(words[:-5]), int(words[-5]) * unit, int(words[-3]) * unit
    raise ValueError("no filesystem line in the df output")


_DISK_OF_DEVICE = (
    re.compile(r"/dev/(mmcblk\d+)(?:p\d+)?"),
    re.compile(r"/dev/(nvme\d+n\d+)(?:p\d+)?"),
    re.compile(r"/dev/((?:sd|hd|vd|xvd)[a-z]+)\d*"),
)


def disk_of_device(source: str) -> str | None:
    """The whole disk's name for a partition's device path: /dev/mmcblk0p2 -> mmcblk0."""
    for pattern in _DISK_OF_DEVICE:
        match = pattern.fullmatch(source)
        if match:
            return match.group(1)
    return None


def boot_device_kind(root: RootMount) -> tuple[str, str | None]:
    """(sd | emmc | nvme | usb | other, a note when the kind is a guess) for the root filesystem's disk."""
    disk = root.disk or (disk_of_device(root.source) if root.source else None)
    if disk is None:
        return "other", None  # overlay, tmpfs, a container's root, LVM/dm, NFS ...
    if disk.startswith("mmcblk"):
        kind = {"SD": "sd", "MMC": "emmc"}.get((root.mmc_type or "").upper())
        if kind is None:
            return "other", f"MMC disk {disk} of unknown card type {root.mmc_type!r}"
        return kind, None
    if disk.startswith("nvme"):
        return "nvme", None
    if disk.startswith("sd"):
        if root.sysfs is None:
            return "other", f"cannot tell which bus {disk} is on (no sysfs path)"
        return ("usb" if re.search(r"/usb\d*/", root.sysfs) else "other"), None
    return "other", None


def root_device(root: RootMount) -> str | None:
    """The root source device, with the kernel's `/dev/root` alias resolved through sysfs."""
    if root.source == "/dev/root" and root.sysfs:
        return "/dev/" + root.sysfs.rstrip("/").rsplit("/", 1)[-1]
    return root.source


# --- kernel settings ------------------------------------------------------------------------------


def parse_cgroup_controllers(text: str) -> tuple[str, ...] | None:
    """cgroup v2 controllers available at /sys/fs/cgroup; None: no unified hierarchy there (v1/hybrid)."""
    values = _keyvalues(text)
    if "controllers" not in values:
        return None
    return tuple(values["controllers"].split())


@cache
def probe_module() -> ModuleType:
    """playbooks/files/probe.py as a module: the memory cgroup rule lives there, once. The node runs that file
    whole (`python3 -c`, standard library only) and cannot import piml, so piml takes the rule from it."""
    path = playbooks_dir() / "files" / "probe.py"
    spec = importlib.util.spec_from_file_location("piml_node_probe", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load {path}; reinstall piml")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines functions only: main() runs as __main__ alone
    return module


def parse_proc_cgroups(text: str) -> dict[str, bool]:
    """/proc/cgroups: {controller: enabled and on a v1 hierarchy} (probe.py's cgroup_v1_controllers)."""
    result: dict[str, bool] = probe_module().cgroup_v1_controllers(text)
    return result


def memory_cgroup(controllers: tuple[str, ...] | None, proc: dict[str, bool]) -> tuple[int | None, bool | None]:
    """(cgroup version, memory controller on): probe.py's memory_cgroup_state, the one rule (see there)."""
    version, on = probe_module().memory_cgroup_state(controllers, proc)
    return version, on


def parse_cmdline(text: str) -> str | None:
    return " ".join(text.split()) or None


def parse_boot_cmdline(text: str) -> tuple[str | None, str | None]:
    """(the cmdline.txt path that exists, its content as is: it must be ONE line, callers check)."""
    lines = text.split("\n")
    if not lines or not lines[0].startswith("path="):
        return None, None
    path = lines[0][len("path=") :].strip() or None
    content = "\n".join(lines[1:]).strip("\n")
    return path, content


def parse_boot_kernel8(text: str) -> bool | None:
    """Whether kernel8.img is on the boot partition (`kernel8=yes|no`); None without a boot partition."""
    value = _keyvalues(text).get("kernel8")
    if value is None:
        line = _first_line(text)
        if line is not None:
            raise ValueError(f"unexpected output {line[:60]!r}")
        return None
    if value not in ("yes", "no"):
        raise ValueError(f"unexpected kernel8={value[:20]!r}")
    return value == "yes"


def cmdline_args(cmdline: str) -> dict[str, str]:
    """Kernel command line words as {name: value} ("" for a bare flag); the last setting wins."""
    result: dict[str, str] = {}
    for word in cmdline.split():
        if word == "--":
            break
        name, _, value = word.partition("=")
        result[name] = value
    return result


# --- swap -----------------------------------------------------------------------------------------


def parse_swaps(text: str) -> tuple[tuple[str, str, int], ...] | None:
    """/proc/swaps: ((filename, type, size kB), ...); None when the file was missing."""
    lines = _lines(text)
    if not lines:
        return None
    result = []
    for line in lines:
        words = line.split()
        if words[0] == "Filename" or len(words) < 3 or not _digits(words[2]):
            continue
        result.append((_unescape_mount(words[0]), words[1], int(words[2])))
    return tuple(result)


def parse_dphys_swapfile(text: str) -> str | None:
    """The swap file dphys-swapfile manages (CONF_SWAPFILE, default /var/swap); None: not installed."""
    values = _keyvalues(text)
    if "present" not in values:
        return None
    path = values.get("CONF_SWAPFILE", "").split("#", 1)[0].strip().strip("\"'")
    return path or "/var/swap"


# --- services, time, health -----------------------------------------------------------------------


def parse_services(text: str) -> dict[str, ServiceState]:
    """`systemctl show -p Id -p LoadState -p ActiveState -p UnitFileState UNIT...`: blocks split by blank lines."""
    result: dict[str, ServiceState] = {}
    for block in re.split(r"\n\s*\n", text.strip()):
        values = _keyvalues(block)
        unit = values.get("Id")
        if not unit:
            continue
        load = values.get("LoadState")
        result[unit] = ServiceState(
            unit=unit,
            loaded=None if not load else load == "loaded",
            active=values.get("ActiveState") or None,
            enabled=values.get("UnitFileState") or None,
            sub=values.get("SubState") or None,
        )
    return result


def tcp_address(hex_address: str) -> tuple[str, int]:
    """A /proc/net/tcp{,6} local address, `0100007F:1F90` -> ("127.0.0.1", 8080). The kernel prints the
    address as 32-bit words in host byte order: little-endian on every board piml supports (arm64, amd64)."""
    address, sep, port = hex_address.partition(":")
    if not sep or len(address) not in (8, 32) or not re.fullmatch(r"[0-9A-Fa-f]+", address + port) or len(port) != 4:
        raise ValueError(f"unexpected socket address {hex_address[:60]!r}")
    raw = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
    ip = ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)
    return str(ip), int(port, 16)


def parse_listening(text: str) -> tuple[tuple[str, int], ...] | None:
    """The `listening` section: `file=tcp|tcp6` for each table read, then the hex local address of each
    listening socket. (address, port) pairs, sorted, once each; None when no table could be read."""
    result: set[tuple[str, int]] = set()
    read_any = False
    for line in _lines(text):
        if line.startswith("file="):
            read_any = True
        else:
            result.add(tcp_address(line))
    if not read_any:
        if result:
            raise ValueError("socket addresses without the table they came from")
        return None
    return tuple(sorted(result, key=lambda item: (item[1], ":" in item[0], item[0])))


def parse_timesync(text: str) -> tuple[str | None, bool | None]:
    """(timesyncd | chronyc | timedatectl | None, clock synchronised?). Unknown when none answered."""
    source: str | None = None
    synced: bool | None = None
    for line in _lines(text):
        if line.startswith("source="):
            if synced is not None:
                break
            source = line[len("source=") :]
        elif source in ("timesyncd", "timedatectl") and line in ("yes", "no"):
            synced = line == "yes"
        elif source == "chronyc" and line.startswith("Leap status"):
            status = line.partition(":")[2].strip().lower()
            if status:
                synced = status != "not synchronised"
    return (source if synced is not None else None), synced


def parse_epoch(text: str) -> int | None:
    line = _first_line(text)
    return None if line is None else _int(line, "epoch time")


def parse_temperature(text: str) -> float | None:
    """thermal_zone0/temp in millidegrees C -> °C."""
    line = _first_line(text)
    if line is None:
        return None
    return round(_int(line, "temperature") / 1000, 3)


def parse_throttled(text: str) -> Throttled | None:
    """`throttled=0x50005`; None when vcgencmd is absent."""
    line = _first_line(text)
    if line is None:
        return None
    match = re.fullmatch(r"throttled=(0x[0-9a-fA-F]+|\d+)", line)
    if match is None:
        raise ValueError(f"unexpected vcgencmd output {line[:60]!r}")
    return Throttled.decode(int(match.group(1), 0))


VCGENCMD_FAILED = "vcgencmd get_throttled failed"


def parse_vcgencmd(text: str) -> tuple[bool | None, Throttled | None, str | None]:
    """The `throttled` section: (vcgencmd there, its state, why there is no state).

    `vcgencmd=absent`, or `exit=N` and what `vcgencmd get_throttled` printed (stdout and stderr), then, when
    that failed for a user other than root, `sudo_exit=N` and what `sudo -n vcgencmd get_throttled` printed.
    A bare `throttled=...` (no exit line) is a run that succeeded. Empty: unknown (None, None, None).
    """
    lines = _lines(text)
    if not lines:
        return None, None, None
    if lines[0] == "vcgencmd=absent":
        return False, None, None
    runs: list[tuple[int | None, list[str]]] = []  # (exit status, lines printed); None: not said (0)
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key in ("exit", "sudo_exit") and (len(runs) < 2 and (key == "exit") == (not runs)):
            runs.append((_int(value, key), []))
        elif runs:
            runs[-1][1].append(line)
        else:
            runs.append((None, [line]))
    whys = []
    for code, printed in runs:
        if not code:
            values = [v for v in printed if v.startswith("throttled=")]
            if values:
                return True, parse_throttled(values[0]), None
            if printed:
                return True, None, f"unexpected vcgencmd output {printed[0][:60]!r}"
            return True, None, "vcgencmd get_throttled printed nothing"
        whys.append(printed[0][:200] if printed else f"exit status {code}")
    why = f"{VCGENCMD_FAILED}: {whys[0]}"
    if len(whys) > 1:
        why += f" (with sudo -n: {whys[1]})"
    return True, None, why


def parse_k3s(text: str) -> tuple[bool | None, str | None]:
    """(installed, version): `installed=yes|no`, then `k3s --version` ("k3s version v1.36.3+k3s1 (...)")."""
    lines = _lines(text)
    if not lines or not lines[0].startswith("installed="):
        return None, None
    installed = lines[0] == "installed=yes"
    if not installed or len(lines) < 2:
        return installed, None
    match = re.match(r"k3s version (\S+)", lines[1])
    return installed, match.group(1) if match else lines[1]


def parse_sudo(text: str) -> tuple[bool | None, bool | None]:
    """(sudo installed, `sudo -n true` works)."""
    value = _keyvalues(text).get("sudo")
    return {"yes": (True, True), "no": (True, False), "absent": (False, False)}.get(value or "", (None, None))


def parse_user(text: str) -> tuple[int | None, str | None]:
    """(uid, user name)."""
    values = _keyvalues(text)
    uid = values.get("uid") or None
    return (None if uid is None else _int(uid, "uid")), (values.get("user") or None)
