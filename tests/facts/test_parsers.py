"""Node facts: the pure parsers on captured outputs, the real script on this machine, and a fuzz test.

The files under captured/ are reconstructed from documented formats (see each file's header), not
taken from hardware; the live tests below run the real script here under sh, dash and busybox.
"""

from __future__ import annotations

import ipaddress
import json
import os
import platform
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from piml.facts import NodeFacts, RootMount, ServiceState, Throttled, gather_command, gather_script, parse_facts
from piml.facts import parsers as p
from piml.facts.commands import NAMES, marker
from piml.facts.sections import split_sections
from tests.fuzzing import examples

CAPTURED = Path(__file__).parent / "captured"


def captured(name: str) -> str:
    return (CAPTURED / name).read_text()


def facts_of(name: str) -> NodeFacts:
    facts = parse_facts(captured(name))
    assert facts.complete
    assert facts.notes == ()
    return facts


# --- captured outputs -----------------------------------------------------------------------------


def test_pi5_nvme_k3s_server():
    f = facts_of("pi5-bookworm-nvme-6.6.txt")
    assert (f.model, f.model_raw) == ("pi5", "Raspberry Pi 5 Model B Rev 1.0")
    assert (f.arch, f.machine, f.kernel) == ("arm64", "aarch64", "6.6.51+rpt-rpi-2712")
    assert (f.os_id, f.os_codename, f.os_pretty) == ("debian", "bookworm", "Debian GNU/Linux 12 (bookworm)")
    assert f.cpu_count == 4
    assert (f.memory_total_mb, f.memory_available_mb) == (8245856 // 1024, 7268416 // 1024)
    assert f.page_size == 16384
    assert (f.root_source, f.root_fstype, f.root_disk, f.boot_device) == ("/dev/nvme0n1p2", "ext4", "nvme0n1", "nvme")
    assert (f.root_size_bytes, f.root_free_bytes) == (245016848 * 1024, 226365820 * 1024)
    assert (f.cgroup_version, f.memory_cgroup) == (2, True)
    assert f.boot_cmdline_path == "/boot/firmware/cmdline.txt"
    assert f.boot_cmdline.endswith("cgroup_memory=1 cgroup_enable=memory") and "\n" not in f.boot_cmdline
    assert p.cmdline_args(f.kernel_cmdline)["cgroup_enable"] == "memory"
    assert (f.swap_total_mb, f.swap_devices, f.dphys_swapfile_active, f.zram_active) == (
        511,
        ("/var/swap",),
        True,
        False,
    )
    assert (f.time_synced, f.time_source, f.epoch) == (True, "timedatectl", 1795000000)
    assert f.temperature_c == 52.35
    assert f.throttled == Throttled(raw=0) and f.throttled.ok
    assert (f.k3s_installed, f.k3s_version) == (True, "v1.36.3+k3s1")
    assert f.k3s_service == ServiceState("k3s.service", loaded=True, active="active", enabled="enabled", sub="running")
    assert f.k3s_service.running and f.k3s_service.is_active and f.k3s_service.is_enabled
    assert f.k3s_agent_service == ServiceState(
        "k3s-agent.service", loaded=False, active="inactive", enabled=None, sub="dead"
    )
    assert (f.vcgencmd, f.throttled_error) == (True, None)
    # the API server's socket is IPv6 and dual-stack: "::"
    assert f.listening_tcp == (
        ("0.0.0.0", 22),
        ("::", 22),
        ("::", 6443),
        ("127.0.0.1", 6444),
        ("127.0.0.1", 10010),
        ("127.0.0.1", 10248),
        ("::", 10250),
    )
    assert (f.sudo_installed, f.sudo_nopasswd, f.uid, f.user) == (True, True, 1000, "pi")
    assert f.can_become_root is True and not f.is_root


def test_pi5_sd_kernel_612_memory_cgroup_off_and_under_voltage():
    f = facts_of("pi5-bookworm-sd-6.12.txt")
    assert (f.hostname, f.model, f.model_raw) == ("raspberrypi", "pi5", "Raspberry Pi 5 Model B Rev 1.0")
    assert (f.kernel, f.page_size) == ("6.12.25+rpt-rpi-2712", 16384)
    assert (f.root_source, f.root_disk, f.boot_device) == ("/dev/mmcblk0p2", "mmcblk0", "sd")
    # 6.12: /proc/cgroups has no memory row; cgroup.controllers decides, and lacks memory.
    assert (f.cgroup_version, f.memory_cgroup) == (2, False)
    assert p.cmdline_args(f.kernel_cmdline)["cgroup_disable"] == "memory"
    assert f.throttled == Throttled(
        raw=0x50005, now=("under_voltage", "throttled"), since_boot=("under_voltage", "throttled")
    )
    assert not f.throttled.ok
    assert f.temperature_c == 71.25
    assert (f.time_synced, f.time_source) == (False, "timedatectl")
    assert (f.k3s_installed, f.k3s_version) == (False, None)
    assert f.k3s_service.loaded is False and not f.k3s_service.running
    assert f.listening_tcp == (("0.0.0.0", 22), ("::", 22), ("::1", 631))


def test_cm4_emmc_dev_root_and_boot_cmdline_txt():
    f = facts_of("cm4-bullseye-emmc.txt")
    assert (f.model, f.model_raw) == ("cm4", "Raspberry Pi Compute Module 4 Rev 1.0")
    assert (f.os_codename, f.page_size) == ("bullseye", 4096)
    # the kernel's /dev/root alias is resolved through sysfs
    assert (f.root_source, f.root_disk, f.boot_device) == ("/dev/mmcblk0p2", "mmcblk0", "emmc")
    assert f.boot_cmdline_path == "/boot/cmdline.txt"
    assert (f.memory_cgroup, f.swap_total_mb) == (True, 99)
    assert f.k3s_agent_service.running and not f.k3s_service.loaded


def test_x86_server():
    f = facts_of("x86-debian-server.txt")
    assert (f.model, f.model_raw, f.arch) == ("other", None, "amd64")
    assert (f.cpu_count, f.memory_total_mb, f.page_size) == (16, 32791324 // 1024, 4096)
    assert (f.root_source, f.root_disk, f.boot_device) == ("/dev/sda2", "sda", "other")  # SATA, not USB
    assert (f.boot_cmdline_path, f.boot_cmdline) == (None, None)
    assert (f.swap_devices, f.swap_total_mb, f.dphys_swapfile_active) == (("/dev/sda3",), 8191, False)
    assert (f.temperature_c, f.throttled, f.vcgencmd, f.throttled_error) == (27.8, None, False, None)
    assert f.k3s_service.running
    assert ("0.0.0.0", 6443) in f.listening_tcp and not any(address == "::" for address, _ in f.listening_tcp)


def test_container_node():
    f = facts_of("container-node.txt")
    assert (f.model, f.model_raw) == ("other", None)
    assert (f.root_source, f.root_fstype, f.root_disk, f.boot_device) == ("overlay", "overlay", None, "other")
    assert (f.root_size_bytes, f.root_free_bytes) == (61255492 * 1024, 37983420 * 1024)
    assert (f.temperature_c, f.throttled, f.vcgencmd) == (None, None, False)
    assert (f.k3s_service, f.k3s_agent_service) == (None, None)  # no systemd to ask
    assert f.listening_tcp == (("0.0.0.0", 22),)  # no tcp6 table: IPv6 off
    assert (f.time_synced, f.time_source) == (None, None)
    assert (f.swap_total_mb, f.swap_devices) == (0, ())
    assert (f.sudo_installed, f.sudo_nopasswd, f.uid, f.user) == (False, False, 0, None)
    assert f.is_root and f.can_become_root


@pytest.mark.parametrize("name", sorted(path.name for path in CAPTURED.glob("*.txt")))
def test_captured_as_dict_is_json(name):
    facts = parse_facts(captured(name))
    data = json.loads(json.dumps(facts.as_dict()))
    assert data["notes"] == [] and data["complete"] is True
    assert set(data) == {f for f in NodeFacts.__dataclass_fields__}


# --- single parsers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "model"),
    [
        ("Raspberry Pi 5 Model B Rev 1.0", "pi5"),
        ("Raspberry Pi 5 Model B Rev 1.1", "pi5"),
        ("Raspberry Pi Compute Module 4 Rev 1.0", "cm4"),
        ("Raspberry Pi Compute Module 4S Rev 1.0", "other"),
        ("Raspberry Pi 500 Rev 1.0", "other"),
        ("Raspberry Pi 4 Model B Rev 1.5", "other"),
        ("Raspberry Pi Compute Module 5 Rev 1.0", "other"),
    ],
)
def test_normalise_model(raw, model):
    assert p.parse_model(raw + "\x00") == (model, raw)


def test_model_absent_is_other():
    assert p.parse_model("") == ("other", None)
    assert p.parse_model("\x00\n") == ("other", None)


@pytest.mark.parametrize(("machine", "arch"), [("aarch64", "arm64"), ("x86_64", "amd64"), ("armv7l", "armv7l")])
def test_arch(machine, arch):
    assert p.parse_arch(machine + "\n") == (arch, machine)
    assert p.parse_arch("") == (None, None)


def test_cpus():
    assert p.parse_cpus("online=0-3") == 4
    assert p.parse_cpus("online=0,2-3,7") == 4
    assert p.parse_cpus("online=0") == 1
    assert p.parse_cpus("count=6") == 6
    assert p.parse_cpus("count=") is None
    with pytest.raises(ValueError):
        p.parse_cpus("online=3-1")


def test_os_release_quoting():
    text = (
        "ID=raspbian\nPRETTY_NAME=\"Raspbian GNU/Linux 11 (bullseye)\"\nNAME='It'\"'\"'s'\n# c\nBAD\nX=\"unbalanced\n"
    )
    values = p.parse_os_release(text)
    assert values["ID"] == "raspbian"
    assert values["PRETTY_NAME"] == "Raspbian GNU/Linux 11 (bullseye)"
    assert values["NAME"] == "It's"
    assert values["X"] == "unbalanced"


def test_pagesize():
    assert p.parse_pagesize("16384\n") == 16384
    assert p.parse_pagesize("") is None
    with pytest.raises(ValueError):
        p.parse_pagesize("undefined")
    with pytest.raises(ValueError):
        p.parse_pagesize("12345")


def test_df_block_sizes():
    k = "Filesystem     1024-blocks    Used Available Capacity Mounted on\n/dev/sda1 100 40 50 45% /\n"
    assert p.parse_df(k) == ("/dev/sda1", 102400, 51200)
    b1 = "Filesystem 1-blocks Used Available Capacity Mounted on\n/dev/root 4096 1024 2048 34% /\n"
    assert p.parse_df(b1) == ("/dev/root", 4096, 2048)
    with pytest.raises(ValueError):
        p.parse_df("df: /: No such file or directory\n")


def _root(source, sysfs=None, disk=None, mmc_type=None):
    return RootMount(source=source, fstype="ext4", sysfs=sysfs, disk=disk, mmc_type=mmc_type)


PI5_USB = "/sys/devices/platform/axi/1000120000.pcie/1f00200000.usb/xhci-hcd.0/usb1/1-1/1-1:1.0/host0/target0:0:0/0:0:0:0/block/sda/sda2"


@pytest.mark.parametrize(
    ("root", "kind"),
    [
        (_root("/dev/mmcblk0p2", disk="mmcblk0", mmc_type="SD"), "sd"),
        (_root("/dev/mmcblk0p2", disk="mmcblk0", mmc_type="MMC"), "emmc"),
        (_root("/dev/nvme0n1p2"), "nvme"),
        (_root("/dev/sda2", sysfs=PI5_USB, disk="sda"), "usb"),
        (
            _root("/dev/sda2", sysfs="/sys/devices/pci0000:00/0000:00:17.0/ata1/host0/block/sda/sda2", disk="sda"),
            "other",
        ),
        (_root("overlay"), "other"),
        (_root("/dev/mapper/vg-root", sysfs="/sys/devices/virtual/block/dm-0", disk="dm-0"), "other"),
        (_root("/dev/vda", sysfs="/sys/devices/pci0000:00/0000:00:02.0/virtio1/block/vda", disk="vda"), "other"),
    ],
)
def test_boot_device_kind(root, kind):
    assert p.boot_device_kind(root)[0] == kind


def test_boot_device_guesses_are_noted():
    assert p.boot_device_kind(_root("/dev/mmcblk0p2"))[1]  # no card type: other, with a note
    assert p.boot_device_kind(_root("/dev/sda1"))[1]  # no sysfs: cannot tell USB from SATA


def test_rootfs_last_mount_wins_and_escapes():
    text = (
        "mount=20 1 8:1 / / rw - ext4 /dev/sda1 rw\nsysfs=/sys/devices/x/block/sda/sda1\ndisk=sda\n"
        "mount=30 20 0:50 / / rw - overlay my\\040overlay rw,lowerdir=/a\n"
    )
    assert p.parse_rootfs(text) == RootMount(source="my overlay", fstype="overlay")
    assert p.parse_rootfs("") is None
    with pytest.raises(ValueError):
        p.parse_rootfs("mount=garbage")


def test_root_device_resolves_dev_root():
    root = _root(
        "/dev/root", sysfs="/sys/devices/platform/emmc2bus/fe340000.mmc/mmc_host/mmc0/mmc0:0001/block/mmcblk0/mmcblk0p2"
    )
    assert p.root_device(root) == "/dev/mmcblk0p2"
    assert p.root_device(_root("/dev/root")) == "/dev/root"


def test_memory_cgroup():
    assert p.memory_cgroup(("cpuset", "cpu", "memory"), {}) == (2, True)
    assert p.memory_cgroup(("cpuset", "cpu"), {"memory": True}) == (2, False)  # v2 decides alone
    assert p.memory_cgroup((), {}) == (2, False)  # an empty controllers file
    assert p.memory_cgroup(
        None, p.parse_proc_cgroups("#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t4\t32\t0\n")
    ) == (1, False)
    # enabled but on no v1 hierarchy (cgroup_no_v1=memory, or v2 only): k3s's v1 check finds none
    no_hierarchy = "#subsys_name\thierarchy\tnum_cgroups\tenabled\nmemory\t0\t1\t1\n"
    assert p.memory_cgroup(None, p.parse_proc_cgroups(no_hierarchy)) == (1, False)
    assert p.memory_cgroup(None, {"memory": True}) == (1, True)
    assert p.memory_cgroup(None, {"cpu": True}) == (1, False)
    assert p.memory_cgroup(None, {}) == (None, None)
    assert p.parse_cgroup_controllers("controllers=\n") == ()
    assert p.parse_cgroup_controllers("") is None


def test_boot_cmdline_keeps_extra_lines():
    path, content = p.parse_boot_cmdline("path=/boot/firmware/cmdline.txt\nconsole=tty1 root=x\ncgroup_enable=memory")
    assert path == "/boot/firmware/cmdline.txt"
    assert content == "console=tty1 root=x\ncgroup_enable=memory"  # two lines: a broken cmdline.txt, callers see it
    assert p.parse_boot_cmdline("") == (None, None)
    assert p.parse_boot_cmdline("path=/boot/cmdline.txt") == ("/boot/cmdline.txt", "")


def test_swaps_zram_and_dphys():
    text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n/dev/zram0                              partition\t2097136\t\t0\t\t100\n"
    assert p.parse_swaps(text) == (("/dev/zram0", "partition", 2097136),)
    assert p.parse_swaps("") is None
    assert p.parse_dphys_swapfile("present=yes\n") == "/var/swap"
    assert p.parse_dphys_swapfile("present=yes\nCONF_SWAPFILE=/srv/swap # comment\n") == "/srv/swap"
    assert p.parse_dphys_swapfile("") is None
    facts = parse_facts(marker("swaps") + "\n" + text + marker("dphys_swapfile") + "\n" + marker("end"))
    assert (facts.zram_active, facts.dphys_swapfile_active, facts.swap_total_mb) == (True, False, 2047)


def test_timesync():
    assert p.parse_timesync("source=timedatectl\nyes") == ("timedatectl", True)
    assert p.parse_timesync("source=timedatectl\nno") == ("timedatectl", False)
    assert p.parse_timesync("source=timedatectl\n") == (None, None)  # no systemd to ask
    assert p.parse_timesync("") == (None, None)
    chrony = (
        "source=chronyc\nReference ID    : C0A80001 (192.168.0.1)\nStratum         : 3\n"
        "System time     : 0.000012 seconds fast of NTP time\nLeap status     : Normal\n"
    )
    assert p.parse_timesync(chrony) == ("chronyc", True)
    assert p.parse_timesync("source=chronyc\nReference ID    : 00000000 ()\nLeap status     : Not synchronised\n") == (
        "chronyc",
        False,
    )
    assert p.parse_timesync("source=timedatectl\nsource=chronyc\nLeap status     : Normal") == ("chronyc", True)


def test_temperature_and_epoch():
    assert p.parse_temperature("48750\n") == 48.75
    assert p.parse_temperature("-5000") == -5.0
    assert p.parse_temperature("") is None
    with pytest.raises(ValueError):
        p.parse_temperature("N/A")
    assert p.parse_epoch("1795000000\n") == 1795000000


def test_throttled():
    assert Throttled.decode(0x50005).now == ("under_voltage", "throttled")
    assert Throttled.decode(0xF000F) == Throttled(
        raw=0xF000F,
        now=("under_voltage", "arm_freq_capped", "throttled", "soft_temp_limit"),
        since_boot=("under_voltage", "arm_freq_capped", "throttled", "soft_temp_limit"),
    )
    assert p.parse_throttled("throttled=0x80000").since_boot == ("soft_temp_limit",)
    assert p.parse_throttled("") is None
    assert Throttled.decode(0x50005).as_dict() == {
        "raw": "0x50005",
        "now": ["under_voltage", "throttled"],
        "since_boot": ["under_voltage", "throttled"],
    }
    with pytest.raises(ValueError):
        p.parse_throttled("VCHI initialization failed")


def test_vcgencmd():
    assert p.parse_vcgencmd("vcgencmd=absent") == (False, None, None)
    assert p.parse_vcgencmd("") == (None, None, None)  # the section said nothing: unknown
    assert p.parse_vcgencmd("exit=0\nthrottled=0x50000\n") == (True, Throttled.decode(0x50000), None)
    assert p.parse_vcgencmd("throttled=0x0") == (True, Throttled(raw=0), None)  # no exit line: it succeeded
    # a warning on stderr before the value does not hide it
    assert p.parse_vcgencmd("exit=0\nvcgencmd: warning\nthrottled=0x0") == (True, Throttled(raw=0), None)
    # fails as the user (not in the video group), works with sudo -n
    assert p.parse_vcgencmd("exit=1\nVCHI initialization failed\nsudo_exit=0\nthrottled=0x4\n") == (
        True,
        Throttled.decode(0x4),
        None,
    )
    assert p.parse_vcgencmd("exit=1\nVCHI initialization failed\nsudo_exit=1\nsudo: a password is required\n") == (
        True,
        None,
        "vcgencmd get_throttled failed: VCHI initialization failed (with sudo -n: sudo: a password is required)",
    )
    assert p.parse_vcgencmd("exit=255\n") == (True, None, "vcgencmd get_throttled failed: exit status 255")  # as root
    assert p.parse_vcgencmd("exit=0\n") == (True, None, "vcgencmd get_throttled printed nothing")
    assert p.parse_vcgencmd("exit=0\nbogus\n") == (True, None, "unexpected vcgencmd output 'bogus'")
    with pytest.raises(ValueError):
        p.parse_vcgencmd("exit=x\n")
    with pytest.raises(ValueError):
        p.parse_vcgencmd("exit=0\nthrottled=0x\n")


def test_listening():
    assert p.tcp_address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert p.tcp_address("00000000:192B") == ("0.0.0.0", 6443)
    mapped = str(ipaddress.IPv6Address("::ffff:192.168.0.1"))  # how Python writes it changed in 3.13
    assert p.tcp_address("0000000000000000FFFF00000100A8C0:0016") == (mapped, 22)
    assert p.tcp_address("B80D0120000000000000000001000000:0050") == ("2001:db8::1", 80)
    # once each, by port; a table read and empty is "nothing listens", no table at all is "unknown"
    assert p.parse_listening("file=tcp\n00000000:0016\n00000000:0016\nfile=tcp6\n") == (("0.0.0.0", 22),)
    assert p.parse_listening("file=tcp\nfile=tcp6\n") == ()
    assert p.parse_listening("") is None
    for bad in ("00000000", "0000000:0016", "00000000:16", "zz000000:0016", "file=tcp\n00000000:0016:1"):
        with pytest.raises(ValueError):
            p.parse_listening(bad if bad.startswith("file=") else "file=tcp\n" + bad)
    with pytest.raises(ValueError):
        p.parse_listening("00000000:0016")  # an address without its table


@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), st.ip_addresses(), st.integers(0, 65535)), max_size=20))
def test_fuzz_listening_round_trip(sockets):
    """The kernel's hex form (32-bit words in little-endian order) of any address and port reads back as is."""

    def hex_form(ip, port):
        raw = ip.packed
        return "".join(raw[i : i + 4][::-1].hex().upper() for i in range(0, len(raw), 4)) + f":{port:04X}"

    lines = [("file=tcp" if v4 else "file=tcp6") + "\n" + hex_form(ip, port) for v4, ip, port in sockets]
    parsed = p.parse_listening("\n".join(lines))
    assert set(parsed or ()) == {(str(ip), port) for _, ip, port in sockets}


@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.sampled_from(
                [
                    "exit=0",
                    "exit=1",
                    "sudo_exit=0",
                    "sudo_exit=1",
                    "exit=",
                    "throttled=0x5",
                    "throttled=0x",
                    "vcgencmd=absent",
                    "sudo: a password is required",
                ]
            ),
            st.text(max_size=30),
        ),
        max_size=8,
    )
)
def test_fuzz_vcgencmd(lines):
    """Any output: a state, or a reason (or a ValueError, which parse_facts makes a note); never both."""
    try:
        present, state, why = p.parse_vcgencmd("\n".join(lines))
    except ValueError:
        return
    assert state is None or why is None
    assert (present is None) == (state is None and why is None and not "".join(lines).strip())


def test_services_order_independent():
    text = "LoadState=loaded\nId=k3s-agent.service\nUnitFileState=disabled\nActiveState=failed\n"
    assert p.parse_services(text) == {
        "k3s-agent.service": ServiceState("k3s-agent.service", loaded=True, active="failed", enabled="disabled")
    }
    assert p.parse_services("") == {}


def test_k3s_sudo_user():
    assert p.parse_k3s("installed=yes\nk3s version v1.37.1+k3s1 (deadbeef)\ngo version go1.25") == (
        True,
        "v1.37.1+k3s1",
    )
    assert p.parse_k3s("installed=yes\n") == (True, None)  # present but not executable
    assert p.parse_k3s("installed=no") == (False, None)
    assert p.parse_k3s("") == (None, None)
    assert p.parse_sudo("sudo=no") == (True, False)
    assert p.parse_sudo("sudo=absent") == (False, False)
    assert p.parse_sudo("") == (None, None)
    assert p.parse_user("uid=1000\nuser=pi") == (1000, "pi")
    assert p.parse_user("uid=\nuser=") == (None, None)


# --- sections and robustness ----------------------------------------------------------------------


def test_sections_banner_crlf_unknown_repeated():
    output = (
        "Welcome to Raspberry Pi OS\r\n@@piml:hostname@@\r\npi1\r\n@@piml:bogus@@\r\nx\r\n"
        "@@piml:hostname@@\r\npi2\r\n@@piml:arch@@\r\naarch64\r\n@@piml:end@@\r\nafter\r\n"
    )
    sections = split_sections(output)
    assert sections.texts == {"hostname": "pi1", "arch": "aarch64"}
    assert sections.complete
    assert len(sections.notes) == 2


def test_truncated_output_is_noted():
    text = captured("pi5-bookworm-nvme-6.6.txt")
    cut = text[: text.index(marker("swaps"))]
    facts = parse_facts(cut)
    assert not facts.complete
    assert facts.page_size == 16384
    assert facts.swap_total_mb == 511 and facts.swap_devices is None  # SwapTotal from meminfo; no /proc/swaps
    assert any("missing sections: swaps" in n for n in facts.notes)
    assert any("cut short" in n for n in facts.notes)
    assert facts.k3s_installed is None and facts.uid is None


def test_garbage_sections_become_notes():
    output = "".join(f"{marker(name)}\n???\n" for name in NAMES) + marker("end") + "\n"
    facts = parse_facts(output)
    assert not any("internal error" in n for n in facts.notes)
    assert facts.page_size is None and facts.cpu_count is None and facts.throttled is None
    assert any(n.startswith("pagesize:") for n in facts.notes)


def test_empty_output():
    facts = parse_facts("")
    assert facts == NodeFacts(notes=("no facts in the output (no section markers)",))


ODD_LINES = [marker(n) for n in (*NAMES, "end")] + [
    "@@piml:@@",
    "@@piml:model@@ trailing",
    "  @@piml:cpus@@  ",
    "x@@piml:arch@@",
    "\x00@@piml:kernel@@",
    "online=0-",
    "online=99999999999999999999999999999999-1",
    "count=-1",
    "mount=1 2 3:4 / / - ",
    "mount= - ext4",
    "throttled=0x",
    "path=",
    "installed=yes",
    "uid=abc",
    "controllers=",
    "source=chronyc",
    "Leap status :",
    "Id=",
    "SubState=",
    "file=tcp",
    "file=tcp6",
    "00000000:192B",
    "0000000000000000000000000000000:1",
    "exit=1",
    "exit=",
    "sudo_exit=0",
    "vcgencmd=absent",
    "MemTotal: kB",
    "Filesystem 1024-blocks Used Available Capacity Mounted on",
    "a b c d e% /",
    "1 2 3 4 5 6%",
]


def _check(output: str) -> None:
    facts = parse_facts(output)
    assert isinstance(facts, NodeFacts)
    json.dumps(facts.as_dict())
    assert not any("internal error" in n for n in facts.notes), facts.notes


@settings(max_examples=examples(300), suppress_health_check=[HealthCheck.too_slow])
@given(st.text())
def test_fuzz_arbitrary_text(text):
    _check(text)


@settings(max_examples=examples(400), suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(st.sampled_from(ODD_LINES), st.text(max_size=40)), max_size=60),
    st.sampled_from(["\n", "\r\n", "\r"]),
)
def test_fuzz_markers_in_odd_places(lines, newline):
    _check(newline.join(lines))


@settings(max_examples=examples(200), suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(path.name for path in CAPTURED.glob("*.txt"))),
    st.lists(st.tuples(st.integers(0, 400), st.sampled_from(ODD_LINES)), max_size=8),
    st.integers(0, 20000),
)
def test_fuzz_mutated_captures(name, inserts, cut):
    lines = captured(name)[:cut].split("\n")
    for at, line in inserts:
        lines.insert(min(at, len(lines)), line)
    _check("\n".join(lines))


# --- the real script on this machine --------------------------------------------------------------


def _shells() -> list[list[str]]:
    shells = [["sh"], ["dash"], ["busybox", "sh"], ["bash", "--posix"]]
    return [s for s in shells if shutil.which(s[0])]


@pytest.fixture(scope="module")
def script() -> str:
    return gather_script()


@pytest.mark.skipif(platform.system() != "Linux", reason="the script's facts are Linux facts")
@pytest.mark.parametrize("shell", _shells(), ids=lambda s: " ".join(s))
def test_script_on_this_machine(shell, script):
    before = time.time()
    run = subprocess.run([*shell, "-c", script], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    facts = parse_facts(run.stdout)
    assert facts.complete and facts.notes == (), facts.notes
    assert facts.hostname == socket.gethostname()
    assert facts.machine == platform.machine() and facts.arch == p.normalise_arch(platform.machine())
    assert facts.kernel == platform.release()
    assert facts.os_id == platform.freedesktop_os_release().get("ID")
    assert facts.cpu_count == os.cpu_count()
    assert facts.page_size == os.sysconf("SC_PAGE_SIZE")
    physical_mb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    assert abs(facts.memory_total_mb - physical_mb) <= 1
    assert 0 < facts.memory_available_mb <= facts.memory_total_mb
    assert facts.root_size_bytes == shutil.disk_usage("/").total
    assert 0 <= facts.root_free_bytes <= facts.root_size_bytes
    assert facts.root_source and facts.boot_device in ("sd", "emmc", "nvme", "usb", "other")
    assert facts.uid == os.getuid()
    assert before - 5 <= facts.epoch <= time.time() + 5
    controllers = Path("/sys/fs/cgroup/cgroup.controllers")
    if controllers.exists():
        assert facts.memory_cgroup == ("memory" in controllers.read_text().split())
    assert facts.memory_cgroup is not None
    assert (facts.temperature_c is None) == (not Path("/sys/class/thermal/thermal_zone0/temp").exists())
    assert (facts.model_raw is None) == (not Path("/proc/device-tree/model").exists())
    assert facts.k3s_installed == Path("/usr/local/bin/k3s").exists()
    swaps = [line.split()[0] for line in Path("/proc/swaps").read_text().splitlines()[1:]]
    assert list(facts.swap_devices) == swaps
    assert facts.kernel_cmdline == " ".join(Path("/proc/cmdline").read_text().split())
    assert facts.listening_tcp is not None and facts.vcgencmd is not None


@pytest.mark.skipif(platform.system() != "Linux", reason="the script's facts are Linux facts")
def test_gather_command_through_a_login_shell():
    shell = shutil.which("bash") or "/bin/sh"
    run = subprocess.run([shell, "-c", gather_command()], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    facts = parse_facts(run.stdout)
    assert facts.complete and facts.cpu_count == os.cpu_count()


def test_script_parses_as_posix_sh(script):
    for shell in ("dash", "sh"):
        if shutil.which(shell):
            subprocess.run([shell, "-n", "-c", script], check=True, timeout=30)


def test_script_sections_match_parsers(script):
    assert [line for line in script.splitlines() if line.startswith("m ")] == [f"m {n}" for n in (*NAMES, "end")]
    assert "cat " not in script  # files are read with the `read` builtin: no fork per file


def test_timesync_from_timesyncd_state_files():
    from piml.facts.parsers import parse_timesync

    assert parse_timesync("source=timesyncd\nyes\n") == ("timesyncd", True)
    assert parse_timesync("source=timesyncd\nno\n") == ("timesyncd", False)


def test_boot_kernel8():
    # Raspberry Pi OS ships kernel8.img on the boot partition (the Pi 5 boots kernel_2712.img unless told);
    # Ubuntu for Pi boots vmlinuz and has none; no boot partition at all: unknown
    assert p.parse_boot_kernel8("kernel8=yes\n") is True
    assert p.parse_boot_kernel8("kernel8=no\n") is False
    assert p.parse_boot_kernel8("") is None
    for bad in ("kernel8=maybe", "???"):
        with pytest.raises(ValueError):
            p.parse_boot_kernel8(bad)
    assert parse_facts(captured("pi5-bookworm-nvme-6.6.txt")).boot_kernel8 is True
    assert parse_facts(captured("x86-debian-server.txt")).boot_kernel8 is None
