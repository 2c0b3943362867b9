"""Rendering first-boot files: what they contain, and what they must never contain."""

from __future__ import annotations

import subprocess

import yaml

from piml.flash import firstboot
from piml.flash.firstboot import NodeSetup, Wifi, static_address, wpa_psk

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTestsOnly0000000000000000000000 piml@test"
PASSPHRASE = "correct horse battery staple"


def setup(**kw) -> NodeSetup:
    base = dict(hostname="pi1", user="ops", ssh_key=KEY, timezone="Europe/Berlin",
                wifi=Wifi("DE", "Lab Net", wpa_psk("Lab Net", PASSPHRASE)),
                static=static_address("192.168.50.21", 24, "192.168.50.1", ("192.168.50.1",), "eth0"))
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
