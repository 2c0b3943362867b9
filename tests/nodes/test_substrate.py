"""Tests of the test-node substrate itself (real nodes; needs root + systemd-nspawn)."""

from __future__ import annotations

import subprocess
import time

import pytest

from .substrate import port_open

pytestmark = pytest.mark.nodes


def test_ssh_as_pi_with_key(three_nodes, node_factory):
    sub = node_factory.substrate
    for n in three_nodes:
        r = sub.ssh(n, "id -un; hostname")
        assert r.stdout.split() == ["pi", n.hostname]
        assert n.user == "pi" and n.port == 22 and n.host_key_fingerprint.startswith("SHA256:")


def test_passwordless_sudo(three_nodes, node_factory):
    for n in three_nodes:
        assert node_factory.substrate.ssh(n, "sudo -n true").returncode == 0


def test_nodes_ping_each_other(three_nodes, node_factory):
    sub = node_factory.substrate
    a, b, c = three_nodes
    for src, dst in ((a, b), (b, c), (c, a)):
        sub.ssh(src, f"ping -c1 -W2 {dst.address}")


def test_pi_files(three_nodes, node_factory):
    sub = node_factory.substrate
    n = three_nodes[0]
    model = sub.ssh(n, "cat /sys/firmware/devicetree/base/model").stdout
    assert model == "Raspberry Pi 5 Model B Rev 1.0\0"
    cmdline = sub.ssh(n, "cat /boot/firmware/cmdline.txt").stdout
    assert cmdline.count("\n") == 1 and "root=PARTUUID=" in cmdline and "rootwait" in cmdline
    assert "dtoverlay=vc4-kms-v3d" in sub.ssh(n, "cat /boot/firmware/config.txt").stdout
    assert sub.ssh(n, "cat /sys/class/thermal/thermal_zone0/temp").stdout.strip() == "48312"
    assert sub.ssh(n, "vcgencmd get_throttled").stdout.strip() == "throttled=0x0"
    assert sub.ssh(n, "python3 -c 'print(42)'").stdout.strip() == "42"


def test_set_throttled_and_temperature(node_factory):
    sub = node_factory.substrate
    (n,) = node_factory(1)
    sub.set_throttled(n, "0x50005")
    sub.set_temperature(n, 81250)
    assert sub.ssh(n, "vcgencmd get_throttled").stdout.strip() == "throttled=0x50005"
    assert sub.ssh(n, "cat /sys/class/thermal/thermal_zone0/temp").stdout.strip() == "81250"
    node_factory.destroy([n])


def test_cm4_and_duplicate_hostnames(node_factory):
    sub = node_factory.substrate
    nodes = node_factory(2, model="cm4", hostname="raspberrypi")
    for n in nodes:
        assert sub.ssh(n, "hostname").stdout.strip() == "raspberrypi"
        assert sub.run(n, "cat /sys/firmware/devicetree/base/model").stdout == "Raspberry Pi Compute Module 4 Rev 1.0\0"
    assert nodes[0].address != nodes[1].address
    node_factory.destroy(nodes)


def test_stop_makes_port_22_unreachable_and_start_brings_it_back(three_nodes, node_factory):
    sub = node_factory.substrate
    n = three_nodes[1]
    sub.ssh(n, "sudo touch /var/tmp/survives-reboot")
    sub.stop(n)
    assert not port_open(n.address, 22, timeout=1)
    assert not sub.is_running(n)
    sub.start(n)
    assert sub.ssh(n, "test -e /var/tmp/survives-reboot").returncode == 0


def test_hard_stop(node_factory):
    sub = node_factory.substrate
    (n,) = node_factory(1)
    sub.stop(n, hard=True)
    assert not port_open(n.address, 22, timeout=1)
    sub.start(n)
    assert sub.ssh(n, "true").returncode == 0
    node_factory.destroy([n])


def test_new_host_key_changes_fingerprint(three_nodes, node_factory):
    sub = node_factory.substrate
    n = three_nodes[2]
    before = n.host_key_fingerprint
    # an ssh client that remembers the old key must refuse the new one
    old_known = n.known_hosts + ".old"
    subprocess.run(["cp", n.known_hosts, old_known], check=True)
    after = sub.new_host_key(n)
    assert after != before and after.startswith("SHA256:")
    scanned = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", n.address], capture_output=True, text=True, timeout=15
    ).stdout
    fp = subprocess.run(["ssh-keygen", "-lf", "-"], input=scanned, capture_output=True, text=True).stdout
    assert after in fp
    argv = n.ssh_argv("true")
    argv[argv.index(f"UserKnownHostsFile={n.known_hosts}")] = f"UserKnownHostsFile={old_known}"
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert r.returncode == 255 and "HOST IDENTIFICATION HAS CHANGED" in r.stderr
    assert sub.ssh(n, "true").returncode == 0  # the substrate's known_hosts was updated


def test_cut_link_and_restore(three_nodes, node_factory):
    sub = node_factory.substrate
    n, other = three_nodes[0], three_nodes[1]
    sub.cut_link(n)
    assert not port_open(n.address, 22, timeout=1)
    assert sub.ssh(other, f"ping -c1 -W1 {n.address}", check=False).returncode != 0
    assert sub.run(n, "hostname").returncode == 0  # still running, just unplugged
    sub.restore_link(n)
    deadline = time.monotonic() + 15
    while not port_open(n.address, 22, timeout=1) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sub.ssh(n, "true").returncode == 0


def test_require_sudo_password(node_factory):
    sub = node_factory.substrate
    (n,) = node_factory(1)
    sub.require_sudo_password(n)
    r = sub.ssh(n, "sudo -n true", check=False)
    assert r.returncode != 0 and "password" in r.stderr
    assert sub.ssh(n, "echo raspberry | sudo -S -p '' true").returncode == 0
    node_factory.destroy([n])


def test_other_model_has_no_device_tree(node_factory):
    sub = node_factory.substrate
    (n,) = node_factory(1, model="other")
    assert sub.run(n, "test -e /sys/firmware/devicetree/base/model", check=False).returncode != 0
    node_factory.destroy([n])


def test_ready_waits_for_logins_and_restarts_failed_user_sessions(node_factory):
    """sshd answers before logins are allowed; a failed systemd-user-sessions (seen under load) is started again,
    and so is one that never ran."""
    (node,) = node_factory(1)
    sub = node_factory.substrate
    drop_in = "/run/systemd/system/systemd-user-sessions.service.d"
    sub.run(
        node,
        f"mkdir -p {drop_in} && printf '[Service]\\nExecStart=\\nExecStart=/bin/false\\n' > {drop_in}/fail.conf"
        " && systemctl daemon-reload && systemctl restart systemd-user-sessions",
        check=False,
    )
    # the node's own Restart=on-failure tries a few times, then systemd gives up (its start limit)
    deadline = time.monotonic() + 30
    while sub.run(node, "systemctl is-failed --quiet systemd-user-sessions", check=False).returncode != 0:
        assert time.monotonic() < deadline, "systemd-user-sessions never reached the failed state"
        time.sleep(0.5)
    sub.run(node, f"rm -r {drop_in} && systemctl daemon-reload && touch /run/nologin")
    assert sub.ssh(node, "true", check=False).returncode != 0  # "System is booting up": the pi user is refused
    sub.wait_ssh(node, timeout=30)
    assert sub.ssh(node, "true").returncode == 0

    # stopped, not failed (its stop writes /run/nologin): started again once sshd has answered for login_grace
    sub.run(node, "systemctl stop systemd-user-sessions")
    assert sub.ssh(node, "true", check=False).returncode != 0
    grace, sub.login_grace = sub.login_grace, 1.0
    try:
        sub.wait_ssh(node, timeout=30)
    finally:
        sub.login_grace = grace
    assert sub.ssh(node, "true").returncode == 0
    node_factory.destroy([node])
