"""Rendering first-boot files: what they contain, and what they must never contain."""

from __future__ import annotations

import subprocess

import yaml

from piml.flash import firstboot
from piml.flash.firstboot import NodeSetup, Wifi, static_address, wpa_psk

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0000000000000000000000 piml@test"
PASSPHRASE = "correct horse battery staple"


def setup(**kw) -> NodeSetup:
    base = dict(
        hostname="pi1",
        user="ops",
        ssh_key=KEY,
        timezone="Europe/Berlin",
        wifi=Wifi("DE", "Lab Net", wpa_psk("Lab Net", PASSPHRASE)),
        static=static_address("192.168.50.21", 24, "192.168.50.1", ("192.168.50.1",), "eth0"),
    )
    base.update(kw)
    return NodeSetup(**base)


def test_wpa_psk_matches_wpa_passphrase():
    # IEEE 802.11i test vector: passphrase "password", SSID "IEEE"
    assert wpa_psk("IEEE", "password") == "f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e"


def test_cloud_init_files():
    files = firstboot.render_cloud_init(setup())
    user = yaml.safe_load(files["user-data"])
    assert files["user-data"].startswith("#cloud-config\n")
    assert user["hostname"] == "pi1" and user["timezone"] == "Europe/Berlin"
    assert user["ssh_pwauth"] is False
    [account] = user["users"]
    assert account["name"] == "ops" and account["lock_passwd"] is True and account["ssh_authorized_keys"] == [KEY]
    meta = yaml.safe_load(files["meta-data"])
    assert meta == {"instance-id": "piml-pi1", "local-hostname": "pi1"}
    net = yaml.safe_load(files["network-config"])["network"]
    assert net["ethernets"]["eth0"]["addresses"] == ["192.168.50.21/24"]
    assert net["ethernets"]["eth0"]["routes"] == [{"to": "default", "via": "192.168.50.1"}]
    assert net["wifis"]["wlan0"]["regulatory-domain"] == "DE"
    assert net["wifis"]["wlan0"]["access-points"]["Lab Net"]["password"] == wpa_psk("Lab Net", PASSPHRASE)
    assert all(PASSPHRASE not in text for text in files.values())


def test_cloud_init_dhcp_without_wifi():
    net = yaml.safe_load(firstboot.render_cloud_init(setup(wifi=None, static=None))["network-config"])["network"]
    assert net["ethernets"]["eth0"]["dhcp4"] is True and "wifis" not in net


def test_firstrun_script_is_valid_bash_and_keeps_secrets_out():
    script = firstboot.render_firstrun(setup())
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert PASSPHRASE not in script
    assert wpa_psk("Lab Net", PASSPHRASE) in script
    assert "set_hostname pi1" in script and "userconf ops '*'" in script
    assert KEY in script and "PasswordAuthentication no" in script and "systemctl enable ssh" in script
    assert "address1=192.168.50.21/24,192.168.50.1" in script
    assert "set_timezone Europe/Berlin" in script
    assert script.rstrip().endswith("exit 0") and "sed -i 's| systemd.run.*||g'" in script


def test_firstrun_quotes_hostile_values():
    evil = setup(wifi=Wifi("DE", "x'; rm -rf / #", "0" * 64), timezone="Etc/UTC")
    script = firstboot.render_firstrun(evil)
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert "'x'\"'\"'; rm -rf / #'" in script


# --- kernel=kernel8.img: only where asked for and where the image has that kernel --------------------------------


def _boot_partition(tmp_path, files: dict[str, bytes]) -> bytearray:
    """A FAT boot partition made by mkfs.vfat and mtools (an independent implementation), as a buffer."""
    from .conftest import run

    path = tmp_path / "boot.part"
    with open(path, "wb") as f:
        f.truncate(34 << 20)
    run("mkfs.vfat", "-F", "32", "-s", "1", "-n", "bootfs", path)
    for name, data in files.items():
        src = tmp_path / "src.bin"
        src.write_bytes(data)
        run("mcopy", "-i", path, src, f"::{name}")
    return bytearray(path.read_bytes())


CONFIG = b"dtparam=audio=on\n[all]\n"
RPI_OS = {
    "cmdline.txt": b"console=tty1 root=PARTUUID=6c586e13-02 rootwait quiet init=/usr/lib/raspberrypi-sys-mods/firstboot\n",
    "config.txt": CONFIG,
    "issue.txt": b"Raspberry Pi reference 2025-11-24\n",
    "kernel8.img": b"\0" * 4096,
    "kernel_2712.img": b"\0" * 4096,
}
UBUNTU = {
    "cmdline.txt": b"console=tty1 root=LABEL=writable rootwait ds=nocloud;s=file:///boot/firmware/\n",
    "config.txt": CONFIG,
    "vmlinuz": b"\0" * 4096,
    "initrd.img": b"\0" * 4096,
    "user-data": b"#cloud-config\n",
    "meta-data": b"instance-id: ubuntu\n",
}


def test_kernel8_only_where_the_image_has_it(tmp_path):
    from piml.flash.fat import FatVolume

    wanted = setup(pi5_4k_pages=True)
    rpi = FatVolume(_boot_partition(tmp_path, RPI_OS))
    applied = firstboot.apply(rpi, wanted)
    assert "config.txt" in applied.files and rpi.read("config.txt").decode().endswith(
        "[pi5]\nkernel=kernel8.img\n[all]\n"
    )
    # Ubuntu for Pi boots vmlinuz and has no kernel8.img: pointing its firmware there would leave it unbootable
    ubuntu = FatVolume(_boot_partition(tmp_path, UBUNTU))
    applied = firstboot.apply(ubuntu, wanted)
    assert applied.mechanism == firstboot.CLOUD_INIT and "config.txt" not in applied.files
    assert ubuntu.read("config.txt") == CONFIG
    # not asked for: left alone on either
    rpi = FatVolume(_boot_partition(tmp_path, RPI_OS))
    assert (
        "config.txt" not in firstboot.apply(rpi, setup(pi5_4k_pages=False)).files and rpi.read("config.txt") == CONFIG
    )


def test_only_an_explicit_true_asks_for_4k_pages(project):
    from piml.flash.settings import wants_4k_pages
    from piml.project import ProjectPaths, load_cluster

    def cluster(text: str):
        (project / "piml.yaml").write_text(text)
        return load_cluster(ProjectPaths.resolve(project, None))

    # the default platform runs Redis: that no longer switches a Pi 5 (the official image runs on 16 KB pages)
    for text in (
        "",
        "nodes: {pi5_4k_pages: auto}\n",
        "queue: {kind: redis}\nray: {gcs_fault_tolerance: true}\n",
        "nodes: {pi5_4k_pages: false}\n",
    ):
        assert wants_4k_pages(cluster(text), "pi5") is False, text
    explicit = cluster("nodes: {pi5_4k_pages: true}\n")
    assert wants_4k_pages(explicit, "pi5") is True
    assert wants_4k_pages(explicit, "cm4") is False and wants_4k_pages(explicit, None) is False
