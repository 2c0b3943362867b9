"""First-boot customisation written into the boot partition, the way Raspberry Pi Imager does it.

Two mechanisms, chosen by what the image's boot partition holds:
  cloud-init   cloud-init NoCloud files `user-data`, `meta-data`, `network-config` (Raspberry Pi OS
               Trixie, Ubuntu): piml replaces them.
  firstrun     Raspberry Pi OS Bookworm: `firstrun.sh` on the boot partition, run once by
               `systemd.run=` on the kernel command line, which removes itself and reboots.
Both also get the memory cgroup flags in cmdline.txt (kept one line) and, on a Pi 5 that should
run 4 KB pages, `kernel=kernel8.img` in config.txt, if the image has kernel8.img to boot (Raspberry Pi
OS has; Ubuntu boots vmlinuz and has none: pointing its firmware at kernel8.img leaves it unbootable).

Rendering is pure (settings in, file contents out); `apply()` writes them with piml.flash.fat.
The Wi-Fi passphrase only ever reaches the card as its WPA PSK (PBKDF2 of passphrase and SSID).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shlex
from dataclasses import dataclass, field

from piml.flash.fat import FatVolume

CLOUD_INIT = "cloud-init"
FIRSTRUN = "firstrun"
MECHANISMS = (CLOUD_INIT, FIRSTRUN)
CLOUD_FILES = ("user-data", "meta-data", "network-config")
CGROUP_FLAGS = ("cgroup_enable=memory", "cgroup_memory=1")
FIRSTRUN_PATH = "/boot/firmware/firstrun.sh"  # Bookworm mounts the boot partition at /boot/firmware
FIRSTRUN_FLAGS = (
    f"systemd.run={FIRSTRUN_PATH}",
    "systemd.run_success_action=reboot",
    "systemd.unit=kernel-command-line.target",
)
REPLACED_KEYS = ("systemd.run", "systemd.run_success_action", "systemd.unit")
CONFIG_MARKER = "# piml: Pi 5 with 4 KB pages"
LOOKED_FOR = (
    "cloud-init NoCloud (user-data, meta-data or network-config in the boot partition)",
    "Raspberry Pi OS Bookworm firstrun (issue.txt 'Raspberry Pi reference', or init=/usr/lib/raspberrypi-sys-mods/firstboot in cmdline.txt)",
)


class FirstBootError(ValueError):
    """The image cannot be customised; the message continues "IMAGE: ..."."""


@dataclass(frozen=True)
class Wifi:
    country: str
    ssid: str
    psk: str = field(repr=False)  # 64 hex digits: never the passphrase itself

    def __post_init__(self):
        if not re.fullmatch(r"[0-9a-f]{64}", self.psk):
            raise ValueError("psk must be 64 hex digits")


def wpa_psk(ssid: str, passphrase: str) -> str:
    """The WPA2 pre-shared key as wpa_passphrase computes it; a 64-hex-digit passphrase is a PSK already."""
    if re.fullmatch(r"[0-9a-fA-F]{64}", passphrase):
        return passphrase.lower()
    if not 8 <= len(passphrase) <= 63:
        raise ValueError("a WPA passphrase has 8 to 63 characters")
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32).hex()


@dataclass(frozen=True)
class StaticAddress:
    interface: str
    address: str  # 192.168.1.21/24
    gateway: str
    dns: tuple[str, ...]


@dataclass(frozen=True)
class NodeSetup:
    hostname: str
    user: str
    ssh_key: str  # one public key line
    timezone: str | None = None
    wifi: Wifi | None = None
    static: StaticAddress | None = None
    cgroup: bool = True
    pi5_4k_pages: bool = False  # asked for; written only where the boot partition has kernel8.img


# --- detection ---------------------------------------------------------------------------------


def detect(names: list[str], cmdline: str | None, issue: str | None) -> str | None:
    """The first-boot mechanism from the boot partition's file names and texts; None if unknown."""
    lower = {n.lower() for n in names}
    if any(f in lower for f in CLOUD_FILES) or "ds=nocloud" in (cmdline or ""):
        return CLOUD_INIT
    if (issue and "raspberry pi reference" in issue.lower()) or "raspberrypi-sys-mods/firstboot" in (cmdline or ""):
        return FIRSTRUN
    return None


# --- cmdline.txt and config.txt -----------------------------------------------------------------


def edit_cmdline(text: str, add: tuple[str, ...] | list[str]) -> str:
    """cmdline.txt with `add` parameters: one line, nothing duplicated.

    The firmware reads only the first line, so that is the one kept. `systemd.run*`/`systemd.unit`
    values are replaced and kept last (firstrun.sh cuts ` systemd.run.*` off the end once it ran);
    other parameters are added when the exact token is missing.
    """
    line = (text.replace("\r", "\n").split("\n") or [""])[0]
    tokens = line.split()
    tail_keys = {a.split("=", 1)[0] for a in add if a.split("=", 1)[0] in REPLACED_KEYS}
    tokens = [t for t in tokens if t.split("=", 1)[0] not in tail_keys]
    head = [a for a in add if a.split("=", 1)[0] not in REPLACED_KEYS]
    tail = [a for a in add if a.split("=", 1)[0] in REPLACED_KEYS]
    systemd = [t for t in tokens if t.split("=", 1)[0] in REPLACED_KEYS]
    tokens = [t for t in tokens if t.split("=", 1)[0] not in REPLACED_KEYS]
    for token in head:
        if token not in tokens:
            tokens.append(token)
    return " ".join(tokens + systemd + tail) + "\n"


def edit_config(text: str, pi5_4k_pages: bool) -> str:
    if not pi5_4k_pages or CONFIG_MARKER in text:
        return text
    body = text if text.endswith("\n") or not text else text + "\n"
    return (
        body + f"\n{CONFIG_MARKER} (kernel8.img), asked for by nodes.pi5_4k_pages\n[pi5]\nkernel=kernel8.img\n[all]\n"
    )


# --- cloud-init ---------------------------------------------------------------------------------


def _yaml(value) -> str:
    """A YAML scalar: JSON strings are valid YAML and quote everything that needs it."""
    return json.dumps(value)


def render_cloud_init(s: NodeSetup) -> dict[str, str]:
    user_data = [
        "#cloud-config",
        "# written by piml flash",
        f"hostname: {_yaml(s.hostname)}",
        "manage_etc_hosts: true",
        "preserve_hostname: false",
    ]
    if s.timezone:
        user_data.append(f"timezone: {_yaml(s.timezone)}")
    user_data += [
        "users:",
        f"  - name: {_yaml(s.user)}",
        "    groups: [users, adm, dialout, audio, netdev, video, plugdev, cdrom, games, input, gpio, spi, i2c, render, sudo]",
        "    shell: /bin/bash",
        '    sudo: "ALL=(ALL) NOPASSWD:ALL"',
        "    lock_passwd: true",
        "    ssh_authorized_keys:",
        f"      - {_yaml(s.ssh_key.strip())}",
        "ssh_pwauth: false",
        "disable_root: true",
        "enable_ssh: true",
        "runcmd:",
        "  - [systemctl, enable, --now, ssh]",
    ]
    meta = [f"instance-id: piml-{s.hostname}", f"local-hostname: {s.hostname}"]
    net = ["network:", "  version: 2", "  ethernets:", "    eth0:", "      optional: true"]
    if s.static and s.static.interface == "eth0":
        net += _netplan_static(s.static, "      ")
    else:
        net.append("      dhcp4: true")
    if s.wifi:
        net += ["  wifis:", "    wlan0:", "      optional: true"]
        if s.static and s.static.interface == "wlan0":
            net += _netplan_static(s.static, "      ")
        else:
            net.append("      dhcp4: true")
        net += [
            f"      regulatory-domain: {_yaml(s.wifi.country)}",
            "      access-points:",
            f"        {_yaml(s.wifi.ssid)}:",
            f"          password: {_yaml(s.wifi.psk)}",
        ]
    return {
        "user-data": "\n".join(user_data) + "\n",
        "meta-data": "\n".join(meta) + "\n",
        "network-config": "\n".join(net) + "\n",
    }


def _netplan_static(st: StaticAddress, pad: str) -> list[str]:
    lines = [
        f"{pad}dhcp4: false",
        f"{pad}addresses: [{_yaml(st.address)}]",
        f"{pad}routes:",
        f"{pad}  - to: default",
        f"{pad}    via: {_yaml(st.gateway)}",
    ]
    if st.dns:
        lines += [f"{pad}nameservers:", f"{pad}  addresses: [{', '.join(_yaml(d) for d in st.dns)}]"]
    return lines


# --- firstrun.sh (Raspberry Pi OS Bookworm) -----------------------------------------------------


def render_firstrun(s: NodeSetup) -> str:
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        "# written by piml flash: runs once at first boot (systemd.run in cmdline.txt), then removes itself",
        "set +e",
        "",
        "CURRENT_HOSTNAME=$(tr -d ' \\t\\n\\r' </etc/hostname)",
        "if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then",
        f"   /usr/lib/raspberrypi-sys-mods/imager_custom set_hostname {q(s.hostname)}",
        "else",
        f"   echo {q(s.hostname)} >/etc/hostname",
        f'   sed -i "s/127.0.1.1.*$CURRENT_HOSTNAME/127.0.1.1\\t"{q(s.hostname)}"/g" /etc/hosts',
        "fi",
        "",
        "# the user: account 1000 renamed, password locked, the project's SSH key",
        "FIRSTUSER=$(getent passwd 1000 | cut -d: -f1)",
        "if [ -f /usr/lib/userconf-pi/userconf ]; then",
        f"   /usr/lib/userconf-pi/userconf {q(s.user)} '*'",
        'elif [ -n "$FIRSTUSER" ]; then',
        f'   if [ "$FIRSTUSER" != {q(s.user)} ]; then',
        f'      usermod -l {q(s.user)} "$FIRSTUSER"; usermod -m -d /home/{q(s.user)} {q(s.user)}; groupmod -n {q(s.user)} "$FIRSTUSER"',
        "   fi",
        f"   usermod -p '*' {q(s.user)}",
        "else",
        f"   useradd -m -u 1000 -s /bin/bash -G sudo,adm,video,users {q(s.user)}",
        "fi",
        f"echo {q(s.user + ' ALL=(ALL) NOPASSWD: ALL')} >/etc/sudoers.d/010_piml-nopasswd",
        "chmod 0440 /etc/sudoers.d/010_piml-nopasswd",
        "FIRSTUSERHOME=$(getent passwd 1000 | cut -d: -f6)",
        'install -o 1000 -g 1000 -m 700 -d "$FIRSTUSERHOME/.ssh"',
        f"printf '%s\\n' {q(s.ssh_key.strip())} >\"$FIRSTUSERHOME/.ssh/authorized_keys\"",
        'chown 1000:1000 "$FIRSTUSERHOME/.ssh/authorized_keys"; chmod 600 "$FIRSTUSERHOME/.ssh/authorized_keys"',
        "",
        "# SSH on, keys only",
        "mkdir -p /etc/ssh/sshd_config.d",
        "printf 'PasswordAuthentication no\\nKbdInteractiveAuthentication no\\n' >/etc/ssh/sshd_config.d/10-piml.conf",
        "systemctl enable ssh",
        "rm -f /etc/ssh/sshd_config.d/rename_user.conf",
    ]
    if s.wifi:
        lines += [
            "",
            "# Wi-Fi (the PSK, not the passphrase)",
            "if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then",
            f"   /usr/lib/raspberrypi-sys-mods/imager_custom set_wlan {q(s.wifi.ssid)} {q(s.wifi.psk)} {q(s.wifi.country)}",
            "else",
            "   mkdir -p /etc/NetworkManager/system-connections",
            "   cat >/etc/NetworkManager/system-connections/piml-wifi.nmconnection <<'PIMLWIFI'",
            "[connection]",
            "id=piml-wifi",
            "type=wifi",
            "interface-name=wlan0",
            "autoconnect=true",
            "[wifi]",
            "mode=infrastructure",
            f"ssid={s.wifi.ssid}",
            "[wifi-security]",
            "key-mgmt=wpa-psk",
            f"psk={s.wifi.psk}",
            "[ipv4]",
            "method=auto",
            "[ipv6]",
            "method=auto",
            "PIMLWIFI",
            "   chmod 600 /etc/NetworkManager/system-connections/piml-wifi.nmconnection",
            f"   iw reg set {q(s.wifi.country)} 2>/dev/null; rfkill unblock wifi 2>/dev/null",
            "fi",
        ]
    if s.static:
        st = s.static
        kind = "wifi" if st.interface == "wlan0" else "ethernet"
        dns = "".join(d + ";" for d in st.dns)
        lines += [
            "",
            f"# static address on {st.interface}",
            "mkdir -p /etc/NetworkManager/system-connections",
            f"cat >/etc/NetworkManager/system-connections/piml-{st.interface}.nmconnection <<'PIMLNET'",
            "[connection]",
            f"id=piml-{st.interface}",
            f"type={kind}",
            f"interface-name={st.interface}",
            "autoconnect-priority=100",
            "[ipv4]",
            "method=manual",
            f"address1={st.address},{st.gateway}",
            *([f"dns={dns}"] if dns else []),
            "[ipv6]",
            "method=auto",
            "PIMLNET",
            f"chmod 600 /etc/NetworkManager/system-connections/piml-{st.interface}.nmconnection",
        ]
    if s.timezone:
        lines += [
            "",
            "if [ -f /usr/lib/raspberrypi-sys-mods/imager_custom ]; then",
            f"   /usr/lib/raspberrypi-sys-mods/imager_custom set_timezone {q(s.timezone)}",
            "else",
            f"   ln -sf /usr/share/zoneinfo/{q(s.timezone)} /etc/localtime",
            f"   echo {q(s.timezone)} >/etc/timezone",
            "fi",
        ]
    lines += [
        "",
        "rm -f /boot/firmware/firstrun.sh /boot/firstrun.sh",
        "sed -i 's| systemd.run.*||g' /boot/firmware/cmdline.txt 2>/dev/null || sed -i 's| systemd.run.*||g' /boot/cmdline.txt",
        "exit 0",
    ]
    return "\n".join(lines) + "\n"


# --- applying -----------------------------------------------------------------------------------


@dataclass
class Applied:
    mechanism: str
    files: list[str]


def read_text(vol: FatVolume, name: str) -> str | None:
    data = vol.read(name)
    return None if data is None else data.decode("utf-8", errors="replace")


def mechanism_of(vol: FatVolume) -> str | None:
    return detect(vol.names(), read_text(vol, "cmdline.txt"), read_text(vol, "issue.txt"))


def has_kernel8(vol: FatVolume) -> bool:
    """The image's boot partition has kernel8.img, the kernel `kernel=kernel8.img` would make the firmware boot."""
    entry = vol.find("kernel8.img")
    return entry is not None and not entry.is_dir


def apply(vol: FatVolume, setup: NodeSetup, now: float | None = None) -> Applied:
    """Write the node's first-boot files into the boot file system `vol`."""
    mechanism = mechanism_of(vol)
    if mechanism is None:
        raise FirstBootError("has no first-boot mechanism piml knows; looked for " + " and ".join(LOOKED_FOR))
    cmdline = read_text(vol, "cmdline.txt")
    if cmdline is None:
        raise FirstBootError("has no cmdline.txt in its boot partition (not a Raspberry Pi image?)")
    files: list[str] = []
    add = list(CGROUP_FLAGS) if setup.cgroup else []
    if mechanism == CLOUD_INIT:
        for name, text in render_cloud_init(setup).items():
            vol.write(name, text.encode(), now)
            files.append(name)
    else:
        vol.write("firstrun.sh", render_firstrun(setup).encode(), now)
        files.append("firstrun.sh")
        add += list(FIRSTRUN_FLAGS)
    new_cmdline = edit_cmdline(cmdline, add)
    if new_cmdline != cmdline:
        vol.write("cmdline.txt", new_cmdline.encode(), now)
        files.append("cmdline.txt")
    config = read_text(vol, "config.txt")
    if setup.pi5_4k_pages and has_kernel8(vol):
        new_config = edit_config(config or "", True)
        if new_config != (config or ""):
            vol.write("config.txt", new_config.encode(), now)
            files.append("config.txt")
    return Applied(mechanism, files)


def static_address(address: str, prefix: int, gateway: str, dns: tuple[str, ...], interface: str) -> StaticAddress:
    ip = ipaddress.ip_interface(f"{address}/{prefix}")
    return StaticAddress(
        interface, str(ip), str(ipaddress.ip_address(gateway)), tuple(str(ipaddress.ip_address(d)) for d in dns)
    )
