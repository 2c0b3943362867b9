"""What piml knows about a node after one facts round trip, and the pure function that builds it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from piml.facts import parsers as p
from piml.facts.commands import NAMES
from piml.facts.sections import split_sections
from piml.facts.values import ServiceState, Throttled

T = TypeVar("T")


@dataclass(frozen=True)
class NodeFacts:
    """Facts gathered from one node. None always means "unknown" (missing file, command or output)."""

    hostname: str | None = None
    model: str | None = None  # pi5 | cm4 | other (no device tree: other)
    model_raw: str | None = None  # "Raspberry Pi 5 Model B Rev 1.0"
    arch: str | None = None  # arm64 | amd64 | `uname -m` as is (armv7l ...)
    machine: str | None = None  # `uname -m` as is: aarch64, x86_64
    kernel: str | None = None  # kernel release: "6.6.51+rpt-rpi-2712"
    os_id: str | None = None  # os-release ID: debian, raspbian, ubuntu
    os_codename: str | None = None  # VERSION_CODENAME: bookworm, trixie
    os_pretty: str | None = None  # PRETTY_NAME
    cpu_count: int | None = None  # online CPUs
    memory_total_mb: int | None = None  # MiB, /proc/meminfo MemTotal
    memory_available_mb: int | None = None  # MiB, MemAvailable
    page_size: int | None = None  # bytes: 4096, or 16384 on a Pi 5 running kernel_2712.img
    root_source: str | None = None  # device on `/` ("/dev/root" resolved when sysfs tells): /dev/nvme0n1p2, overlay
    root_fstype: str | None = None  # ext4, btrfs, overlay
    root_disk: str | None = None  # whole disk behind `/`: mmcblk0, nvme0n1, sda
    root_size_bytes: int | None = None
    root_free_bytes: int | None = None  # available to unprivileged users (df "Available")
    boot_device: str | None = None  # sd | emmc | nvme | usb | other
    cgroup_version: int | None = None  # 2 (unified) or 1 (legacy/hybrid)
    memory_cgroup: bool | None = None  # the memory controller is enabled (k3s needs it)
    kernel_cmdline: str | None = None  # /proc/cmdline
    boot_cmdline_path: str | None = None  # /boot/firmware/cmdline.txt or /boot/cmdline.txt, whichever exists
    boot_cmdline: str | None = None  # its content as is (should be ONE line)
    boot_kernel8: bool | None = None  # kernel8.img (the Pi 5's 4 KB-page kernel) next to that cmdline.txt
    swap_total_mb: int | None = None  # MiB, active swap (sum of /proc/swaps)
    swap_devices: tuple[str, ...] | None = None  # active swap files/devices: /var/swap, /dev/zram0
    dphys_swapfile_active: bool | None = None  # dphys-swapfile's swap file is in use
    zram_active: bool | None = None  # swap on a zram device
    time_synced: bool | None = None  # NTP synchronised, per timedatectl or chronyc
    time_source: str | None = None  # timesyncd | chronyc | timedatectl: which answered
    epoch: int | None = None  # the node's clock, seconds since 1970, when the script ran
    temperature_c: float | None = None  # thermal_zone0
    throttled: Throttled | None = None  # None without vcgencmd, or when it failed (throttled_error)
    vcgencmd: bool | None = None  # vcgencmd is on the node
    throttled_error: str | None = None  # why vcgencmd gave no state: "vcgencmd get_throttled failed: ..."
    k3s_installed: bool | None = None  # /usr/local/bin/k3s exists
    k3s_version: str | None = None  # "v1.36.3+k3s1"
    k3s_service: ServiceState | None = None  # None: no systemd to ask
    k3s_agent_service: ServiceState | None = None
    listening_tcp: tuple[tuple[str, int], ...] | None = None  # (address, port) of each listening TCP socket
    sudo_installed: bool | None = None
    sudo_nopasswd: bool | None = None  # `sudo -n true` succeeds
    uid: int | None = None
    user: str | None = None
    complete: bool = False  # the output reached the end marker
    notes: tuple[str, ...] = ()  # what could not be parsed, and why

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    @property
    def can_become_root(self) -> bool | None:
        """Root already, or passwordless sudo; None when unknown."""
        if self.uid == 0 or self.sudo_nopasswd:
            return True
        if self.uid is None or self.sudo_nopasswd is None:
            return None
        return False

    def as_dict(self) -> dict[str, Any]:
        """The facts for `--json`: plain JSON types only."""
        result: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (Throttled, ServiceState)):
                value = value.as_dict()
            elif isinstance(value, tuple):
                value = [list(item) if isinstance(item, tuple) else item for item in value]
            result[f.name] = value
        return result


def parse_facts(output: str) -> NodeFacts:
    """NodeFacts from the gather script's output. Never raises: what cannot be read becomes None
    and a note saying why."""
    sections = split_sections(output if isinstance(output, str) else "")
    notes = list(sections.notes)
    texts = sections.texts

    if not texts:
        notes.append("no facts in the output (no section markers)")
    else:
        missing = [n for n in NAMES if n not in texts]
        if missing:
            notes.append(f"missing sections: {', '.join(missing)}")
        if not sections.complete:
            notes.append("the output stops before the end marker (cut short?)")

    def fact(name: str, parser: Callable[[str], T], default: Any = None) -> T | Any:
        if name not in texts:
            return default
        try:
            return parser(texts[name])
        except ValueError as error:
            notes.append(f"{name}: {error}")
        except Exception as error:  # a parser bug must not cost the other facts
            notes.append(f"{name}: internal error: {type(error).__name__}: {error}")
        return default

    values: dict[str, Any] = {"hostname": fact("hostname", p.parse_hostname)}
    values["model"], values["model_raw"] = fact("model", p.parse_model, (None, None))
    values["arch"], values["machine"] = fact("arch", p.parse_arch, (None, None))
    values["kernel"] = fact("kernel", p.parse_kernel)

    os_release = fact("os_release", p.parse_os_release, {})
    values["os_id"] = os_release.get("ID") or None
    values["os_codename"] = os_release.get("VERSION_CODENAME") or None
    values["os_pretty"] = os_release.get("PRETTY_NAME") or None

    values["cpu_count"] = fact("cpus", p.parse_cpus)
    meminfo = fact("meminfo", p.parse_meminfo, {})
    if "meminfo" in texts and "MemTotal" not in meminfo:
        notes.append("meminfo: no MemTotal")
    values["memory_total_mb"] = meminfo["MemTotal"] // 1024 if "MemTotal" in meminfo else None
    values["memory_available_mb"] = meminfo["MemAvailable"] // 1024 if "MemAvailable" in meminfo else None
    values["page_size"] = fact("pagesize", p.parse_pagesize)

    root = fact("rootfs", p.parse_rootfs)
    df = fact("df", p.parse_df)
    if root is not None:
        values["root_source"] = p.root_device(root)
        values["root_fstype"] = root.fstype
        values["root_disk"] = root.disk or (p.disk_of_device(values["root_source"] or ""))
        values["boot_device"], note = p.boot_device_kind(root)
        if note:
            notes.append(f"rootfs: {note}")
    if df is not None:
        source, values["root_size_bytes"], values["root_free_bytes"] = df
        if values.get("root_source") is None:
            values["root_source"] = source or None

    controllers = fact("cgroup", p.parse_cgroup_controllers)
    proc_cgroups = fact("proc_cgroups", p.parse_proc_cgroups, {})
    if "cgroup" in texts or "proc_cgroups" in texts:
        values["cgroup_version"], values["memory_cgroup"] = p.memory_cgroup(controllers, proc_cgroups)

    values["kernel_cmdline"] = fact("cmdline", p.parse_cmdline)
    values["boot_cmdline_path"], values["boot_cmdline"] = fact("boot_cmdline", p.parse_boot_cmdline, (None, None))
    values["boot_kernel8"] = fact("boot_kernel8", p.parse_boot_kernel8)

    swaps = fact("swaps", p.parse_swaps)
    if swaps is not None:
        values["swap_total_mb"] = sum(size for _, _, size in swaps) // 1024
        values["swap_devices"] = tuple(name for name, _, _ in swaps)
        values["zram_active"] = any(name.startswith("/dev/zram") for name, _, _ in swaps)
        if "dphys_swapfile" in texts:
            swapfile = fact("dphys_swapfile", p.parse_dphys_swapfile)
            values["dphys_swapfile_active"] = swapfile is not None and swapfile in values["swap_devices"]
    elif "meminfo" in texts and "SwapTotal" in meminfo:
        values["swap_total_mb"] = meminfo["SwapTotal"] // 1024

    services = fact("services", p.parse_services, {})
    if services:
        values["k3s_service"] = services.get("k3s.service")
        values["k3s_agent_service"] = services.get("k3s-agent.service")

    values["listening_tcp"] = fact("listening", p.parse_listening)

    values["time_source"], values["time_synced"] = fact("timesync", p.parse_timesync, (None, None))
    values["epoch"] = fact("epoch", p.parse_epoch)
    values["temperature_c"] = fact("temperature", p.parse_temperature)
    vcgencmd = fact("throttled", p.parse_vcgencmd, (None, None, None))
    values["vcgencmd"], values["throttled"], values["throttled_error"] = vcgencmd
    values["k3s_installed"], values["k3s_version"] = fact("k3s", p.parse_k3s, (None, None))
    values["sudo_installed"], values["sudo_nopasswd"] = fact("sudo", p.parse_sudo, (None, None))
    values["uid"], values["user"] = fact("user", p.parse_user, (None, None))

    return NodeFacts(**values, complete=sections.complete, notes=tuple(notes))
