"""Test nodes for piml: Debian bookworm machines booted with systemd-nspawn on this one machine.

Each node is a real systemd (``systemd-nspawn --boot``) running sshd, in its own network namespace,
joined by a veth pair to a bridge in the host namespace::

    host: bridge pimlbr<I> 198.18.<I>.1/24
      |-- veth pt<I>v1  <->  eth0 in netns piml-t<I>-node1   198.18.<I>.11
      |-- veth pt<I>v2  <->  eth0 in netns piml-t<I>-node2   198.18.<I>.12
      ...

``<I>`` is the *instance* number (0 for pytest, 1 for the developer CLI), so the two never collide.
Nodes have no default route: they reach the host and each other, nothing else.

The root filesystem is made once with debootstrap and cached under /var/cache/piml-testnodes; each node
gets an overlayfs on top of it (upper/work dirs under /run/piml-testnodes/<I>/nodes/<name>/).

Standard library only. Must run as root.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

# --------------------------------------------------------------------------------------------------
# Constants

PREFIX = "piml-t"  # netns and machine names start with it; cleanup_stale() relies on it
VETH_PREFIX = "pt"  # host side veth names: pt<instance>v<index>
BRIDGE_PREFIX = "pimlbr"
SUITE = "bookworm"
MIRROR = os.environ.get("PIML_TESTNODES_MIRROR", "http://deb.debian.org/debian")
CACHE_DIR = Path(os.environ.get("PIML_TESTNODES_CACHE", "/var/cache/piml-testnodes"))
RUN_ROOT = Path(os.environ.get("PIML_TESTNODES_RUN", "/run/piml-testnodes"))
NSPAWN_RUN = Path("/run/systemd/nspawn")

PACKAGES = (
    "ca-certificates",
    "dbus",
    "iproute2",
    "iputils-ping",
    "kmod",
    "libpam-systemd",
    "openssh-server",
    "procps",
    "python3",
    "python3-apt",
    "python3-venv",  # the ray-external stage makes a venv (a Debian host without uv needs it)
    "sudo",
    "systemd-sysv",
    "systemd-timesyncd",
)

# Units that are slow or useless in a container. Masked in the cached rootfs.
MASKED_UNITS = (
    "console-getty.service",
    "getty@.service",
    "serial-getty@.service",
    "getty.target",
    "systemd-networkd-wait-online.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "apt-daily.service",
    "apt-daily-upgrade.service",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
    # flaky under parallel boot (left nodes "degraded"); test nodes keep their journal in /run anyway
    "systemd-journal-flush.service",
)

# Shell script run (chroot) once on the freshly debootstrapped rootfs. Part of the cache key.
PREPARE_ROOTFS = r"""
set -eu
# Per-node identity is written into each node's overlay; the shared image must not carry one.
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
ln -s /etc/machine-id /var/lib/dbus/machine-id
# The user Raspberry Pi OS images have.
groups=""
for g in adm dialout cdrom sudo audio video plugdev games users input render netdev spi i2c gpio; do
    getent group "$g" >/dev/null || groupadd -r "$g"
    groups="$groups,$g"
done
useradd -m -u 1000 -U -s /bin/bash -G "${groups#,}" pi
echo 'pi:raspberry' | chpasswd
# Same file name as on Raspberry Pi OS.
echo 'pi ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/010_pi-nopasswd
chmod 0440 /etc/sudoers.d/010_pi-nopasswd
install -d -m 0700 -o pi -g pi /home/pi/.ssh
# sshd: only the host keys each node gets; no DNS lookups.
cat > /etc/ssh/sshd_config.d/piml-test.conf <<'EOF'
# piml test node
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
UseDNS no
EOF
# Units that are slow or useless in a container.
for u in @MASKED@; do ln -sf /dev/null "/etc/systemd/system/$u"; done
# systemd-timesyncd refuses to run in containers (ConditionVirtualization=!container); a Pi runs it, so
# reset the conditions. Its servers are set per node (the host's bridge address only).
mkdir -p /etc/systemd/system/systemd-timesyncd.service.d
cat > /etc/systemd/system/systemd-timesyncd.service.d/piml-test.conf <<'EOF'
[Unit]
# piml test node: run in the container too
ConditionVirtualization=
EOF
# No DNS: nodes have no route out of the test bridge.
echo '# piml test node: no DNS (isolated test network)' > /etc/resolv.conf
# Test stand-in for the Raspberry Pi firmware tool.
cat > /usr/bin/vcgencmd <<'EOF'
#!/bin/sh
# TEST STAND-IN for Raspberry Pi's vcgencmd (piml test node, NOT the real tool).
# Answers a few queries; values come from /etc/piml-test/ (written by tests/nodes/substrate.py).
d=/etc/piml-test
case "$1" in
  get_throttled) echo "throttled=$(cat "$d/throttled" 2>/dev/null || echo 0x0)" ;;
  measure_temp)
    t=$(cat /sys/class/thermal/thermal_zone0/temp 2>/dev/null || echo 0)
    echo "temp=$((t / 1000)).$(((t % 1000) / 100))'C" ;;
  version) echo "piml test stand-in vcgencmd" ;;
  *) echo "vcgencmd (piml test stand-in): unsupported command: $*" >&2; exit 1 ;;
esac
EOF
chmod 0755 /usr/bin/vcgencmd
apt-get clean
rm -rf /var/lib/apt/lists/*
""".replace("@MASKED@", " ".join(MASKED_UNITS))

CONFIG_TXT = """\
# For more options and information see
# http://rptl.io/configtxt
# Some settings may impact device functionality. See link above for details

# Uncomment some or all of these to enable the optional hardware interfaces
#dtparam=i2c_arm=on
#dtparam=i2s=on
#dtparam=spi=on

# Enable audio (loads snd_bcm2835)
dtparam=audio=on

# Automatically load overlays for detected cameras
camera_auto_detect=1

# Automatically load overlays for detected DSI displays
display_auto_detect=1

# Automatically load initramfs files, if found
auto_initramfs=1

# Enable DRM VC4 V3D driver
dtoverlay=vc4-kms-v3d
max_framebuffers=2

# Don't have the firmware create an initial video= setting in cmdline.txt.
# Use the kernel's default instead.
disable_fw_kms_setup=1

# Run in 64-bit mode
arm_64bit=1

# Disable compensation for displays with overscan
disable_overscan=1

# Run as fast as firmware / board allows
arm_boost=1

[cm4]
# Enable host mode on the 2711 built-in XHCI USB controller.
# This line should be removed if the legacy DWC2 controller is required
# (e.g. for USB device mode) or if USB support is not required.
otg_mode=1

[all]
"""

# model key -> (device-tree model, device-tree compatible, MAC OUI). "other" has no device tree.
MODELS: dict[str, tuple[str, Sequence[str], str] | None] = {
    "pi5": ("Raspberry Pi 5 Model B Rev 1.0", ("raspberrypi,5-model-b", "brcm,bcm2712"), "2c:cf:67"),
    "cm4": ("Raspberry Pi Compute Module 4 Rev 1.0", ("raspberrypi,4-compute-module", "brcm,bcm2711"), "d8:3a:dd"),
    "pi4": ("Raspberry Pi 4 Model B Rev 1.4", ("raspberrypi,4-model-b", "brcm,bcm2711"), "dc:a6:32"),
    "other": None,
}

BOOT_TIMEOUT = 60.0
REBOOT_EXIT_CODE = 133  # systemd-nspawn's exit status when the container's systemd reboots
STOP_TIMEOUT = 20.0


class SubstrateError(RuntimeError):
    """Something about the test nodes went wrong (message says what, with the node's console tail)."""


# --------------------------------------------------------------------------------------------------
# Small helpers


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run(argv: Sequence[str], check: bool = True, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise SubstrateError(f"command failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
    return proc


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-20000:].decode(errors="replace")
    except OSError:
        return "(no console log)"
    data = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", data)
    return "\n".join(data.splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def _nspawn_pids(machine_prefix: str) -> dict[str, int]:
    """Running systemd-nspawn processes whose machine name starts with machine_prefix -> {machine: pid}."""
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        argv = _cmdline(int(entry))
        if not argv or not argv[0].endswith("systemd-nspawn"):
            continue
        for a in argv:
            if a.startswith("--machine=") and a[len("--machine=") :].startswith(machine_prefix):
                if _pid_alive(int(entry)):
                    found[a[len("--machine=") :]] = int(entry)
    return found


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_dead(pids: Iterable[int], timeout: float) -> bool:
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_pid_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return not any(_pid_alive(p) for p in pids)


def _mounts_under(root: Path) -> list[str]:
    out = []
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4].replace("\\040", " ")
            if mp.startswith(prefix):
                out.append(mp)
    return sorted(out, key=len, reverse=True)


def _umount(path: str) -> None:
    if _run(["umount", path], check=False).returncode != 0:
        _run(["umount", "-l", path], check=False)


def _link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def _sysctl_disable_ipv6(ifname: str, netns: str | None = None) -> None:
    argv = ["sysctl", "-q", "-w", f"net.ipv6.conf.{ifname}.disable_ipv6=1"]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    _run(argv, check=False)


def check_environment() -> list[str]:
    """What keeps this machine from running test nodes (empty list: nothing)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not running as root (test nodes need root for netns, overlayfs and systemd-nspawn)")
    for tool, pkg in (
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
        ("ip", "iproute2"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("nsenter", "util-linux"),
        ("mount", "mount"),
    ):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found (apt-get install {pkg}; see tests/nodes/install-deps.sh)")
    try:
        if "overlay" not in Path("/proc/filesystems").read_text():
            _run(["modprobe", "overlay"], check=False)
            if "overlay" not in Path("/proc/filesystems").read_text():
                problems.append("kernel has no overlayfs")
    except OSError:
        problems.append("cannot read /proc/filesystems")
    return problems


# --------------------------------------------------------------------------------------------------
# The cached root filesystem


def rootfs_key() -> str:
    h = hashlib.sha256(json.dumps([SUITE, sorted(PACKAGES), PREPARE_ROOTFS]).encode()).hexdigest()
    return h[:12]


def rootfs_path() -> Path:
    return CACHE_DIR / f"{SUITE}-{rootfs_key()}"


def ensure_rootfs(log=_log) -> Path:
    """Build the shared bookworm rootfs once (debootstrap + PREPARE_ROOTFS); return its path.

    Built in a temp dir next to the cache and renamed into place, so a killed build leaves no half cache.
    """
    final = rootfs_path()
    if (final / "etc/os-release").exists():
        return final
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        if (final / "etc/os-release").exists():
            return final
        for stale in CACHE_DIR.glob(".build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        build = Path(tempfile.mkdtemp(prefix=".build-", dir=CACHE_DIR))
        os.chmod(build, 0o755)
        try:
            log(f"[testnodes] building rootfs {final} with debootstrap (once; about a minute)")
            t0 = time.monotonic()
            _run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", SUITE, str(build), MIRROR],
                timeout=1800,
            )
            _run(["chroot", str(build), "/bin/sh", "-c", PREPARE_ROOTFS], timeout=300)
            (build / ".piml-testnodes").write_text(json.dumps({"packages": sorted(PACKAGES), "key": rootfs_key()}))
            os.rename(build, final)
            log(f"[testnodes] rootfs ready in {time.monotonic() - t0:.0f}s")
        finally:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
    return final


# --------------------------------------------------------------------------------------------------
# Nodes


@dataclasses.dataclass
class Node:
    name: str
    address: str
    model: str
    hostname: str
    key_path: str
    known_hosts: str
    host_key_fingerprint: str  # SHA256:... of the ed25519 host key
    index: int
    instance: int
    port: int = 22
    user: str = "pi"

    @property
    def machine(self) -> str:
        return f"{PREFIX}{self.instance}-{self.name}"

    @property
    def netns(self) -> str:
        return self.machine

    @property
    def host_veth(self) -> str:
        return f"{VETH_PREFIX}{self.instance}v{self.index}"

    def ssh_argv(self, *command: str, user: str | None = None, extra: Sequence[str] = ()) -> list[str]:
        """argv for ssh to this node with the test key and the substrate's known_hosts (strict checking)."""
        return [
            "ssh",
            "-i",
            self.key_path,
            "-p",
            str(self.port),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            *extra,
            f"{user or self.user}@{self.address}",
            *command,
        ]

    def ssh_command_line(self) -> str:
        return " ".join(self.ssh_argv())


def _node_from_json(d: dict) -> Node:
    fields = {f.name for f in dataclasses.fields(Node)}
    return Node(**{k: v for k, v in d.items() if k in fields})


# Every node's systemd takes inotify instances, all counted against root on this one machine: the
# kernel default (128) runs out at a few dozen nodes ("Failed to allocate manager object: Too many open files").
INOTIFY_LIMITS = {"fs/inotify/max_user_instances": 8192, "fs/inotify/max_user_watches": 1048576}


def _raise_inotify_limits() -> None:
    for key, wanted in INOTIFY_LIMITS.items():
        path = Path("/proc/sys") / key
        try:
            if int(path.read_text()) < wanted:
                path.write_text(str(wanted))
        except (OSError, ValueError):
            pass  # a read-only /proc/sys: boot anyway and let a failure say why


class Substrate:
    """A set of test nodes on bridge pimlbr<instance>. Use as a context manager or call teardown()."""

    def __init__(
        self, instance: int = 0, hostname_all: str | None = None, boot_timeout: float = BOOT_TIMEOUT, log=_log
    ):
        if not 0 <= instance <= 9:
            raise ValueError("instance must be 0..9")
        self.instance = instance
        self.hostname_all = hostname_all
        self.boot_timeout = boot_timeout
        self.log = log
        self.run_dir = RUN_ROOT / str(instance)
        self.bridge = f"{BRIDGE_PREFIX}{instance}"
        self.network = ipaddress.ip_network(f"198.18.{instance}.0/24")
        self.gateway = f"198.18.{instance}.1"
        self.key_path = self.run_dir / "id_ed25519"
        self.known_hosts = self.run_dir / "known_hosts"
        self.nodes: dict[str, Node] = {}
        self.dirty: set[str] = set()  # nodes a fault helper touched
        self._procs: dict[str, subprocess.Popen] = {}
        self._stopping: set[str] = set()  # nodes stop() is powering off: their exit is not a reboot
        self.login_grace = 20.0  # seconds sshd may answer while logins are still refused before we step in
        self._rootfs: Path | None = None
        self._lock_state = threading.Lock()

    # ---- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> Substrate:
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    @classmethod
    def load(cls, instance: int, log=_log) -> Substrate:
        """Re-attach to nodes another process brought up (the CLI's `up`)."""
        sub = cls(instance=instance, log=log)
        state = sub.run_dir / "state.json"
        if state.exists():
            data = json.loads(state.read_text())
            sub.hostname_all = data.get("hostname_all")
            for nd in data.get("nodes", []):
                node = _node_from_json(nd)
                sub.nodes[node.name] = node
        return sub

    def _save_state(self) -> None:
        with self._lock_state:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            data = {
                "instance": self.instance,
                "hostname_all": self.hostname_all,
                "nodes": [dataclasses.asdict(n) for n in sorted(self.nodes.values(), key=lambda n: n.index)],
            }
            tmp = self.run_dir / "state.json.tmp"
            tmp.write_text(json.dumps(data, indent=1))
            os.replace(tmp, self.run_dir / "state.json")
            lines = []
            for n in self.nodes.values():
                for pub in sorted((self._node_dir(n.name) / "upper/etc/ssh").glob("ssh_host_*_key.pub")):
                    kt, kb = pub.read_text().split()[:2]
                    lines.append(f"{n.address} {kt} {kb}\n")
            self.known_hosts.write_text("".join(lines))

    def setup(self) -> None:
        """Rootfs, test key, bridge. Idempotent."""
        problems = check_environment()
        if problems:
            raise SubstrateError("this machine cannot run test nodes:\n  " + "\n  ".join(problems))
        self._rootfs = ensure_rootfs(self.log)
        _raise_inotify_limits()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o755)
        if not self.key_path.exists():
            _run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    f"piml-testnodes-{self.instance}",
                    "-f",
                    str(self.key_path),
                ]
            )
        os.chmod(self.key_path, 0o600)
        if not _link_exists(self.bridge):
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _sysctl_disable_ipv6(self.bridge)
            _run(["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])

    def teardown(self) -> None:
        """Stop all nodes of this instance and remove everything (also leftovers of crashed runs)."""
        cleanup_stale(self.instance, log=self.log)
        self.nodes.clear()
        self._procs.clear()
        self.dirty.clear()

    # ---- creating nodes ------------------------------------------------------------------------

    def root_of(self, name: str) -> Path:
        """The node's file system as this machine sees it (its overlay, mounted while the node runs): for tests
        that put a program's files where the node's own paths are."""
        return self._node_dir(name) / "root"

    def _node_dir(self, name: str) -> Path:
        return self.run_dir / "nodes" / name

    def _free_index(self, taken: set[int]) -> int:
        for i in range(1, 240):
            if i not in taken:
                return i
        raise SubstrateError("no free node index")

    def create(
        self, count: int = 1, model: str = "pi5", hostname: str | None = None, names: Sequence[str] | None = None
    ) -> list[Node]:
        """Create and boot nodes in parallel; return them once sshd answers on every one."""
        if self._rootfs is None:
            self.setup()
        if model not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}")
        if names is None:
            names = []
            taken_names = set(self.nodes)
            i = 1
            while len(names) < count:
                if f"node{i}" not in taken_names:
                    names.append(f"node{i}")
                i += 1
        taken = {n.index for n in self.nodes.values()}
        new: list[Node] = []
        for name in names:
            if not re.fullmatch(r"[a-z][a-z0-9-]{0,20}", name) or name in self.nodes:
                raise ValueError(f"bad or duplicate node name {name!r}")
            idx = self._free_index(taken)
            taken.add(idx)
            node = Node(
                name=name,
                address=f"198.18.{self.instance}.{10 + idx}",
                model=model,
                hostname=hostname or self.hostname_all or name,
                key_path=str(self.key_path),
                known_hosts=str(self.known_hosts),
                host_key_fingerprint="",
                index=idx,
                instance=self.instance,
            )
            self._seed(node)
            self._plumb(node)
            self.nodes[name] = node
            new.append(node)
        self._save_state()
        self._boot_all(new)
        return new

    def _boot_all(self, nodes: Sequence[Node]) -> None:
        for n in nodes:
            self._spawn(n)
        errors = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(nodes))) as ex:
            for fut in [ex.submit(self.wait_ssh, n) for n in nodes]:
                try:
                    fut.result()
                except SubstrateError as e:
                    errors.append(str(e))
        if errors:
            raise SubstrateError("\n\n".join(errors))

    def _seed(self, node: Node) -> None:
        """Write the node's own files into its overlay upper dir, and its fake hardware dirs."""
        d = self._node_dir(node.name)
        if d.exists():
            shutil.rmtree(d)
        upper = d / "upper"
        for sub in ("work", "root", "hw/firmware", "hw/thermal", "piml-test"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (upper / "etc/ssh").mkdir(parents=True)
        (upper / "boot/firmware").mkdir(parents=True)
        (upper / "etc/systemd/timesyncd.conf.d").mkdir(parents=True)
        os.chmod(upper, 0o755)
        # identity
        (upper / "etc/hostname").write_text(node.hostname + "\n")
        (upper / "etc/hosts").write_text(
            f"127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
            f"ff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n\n127.0.1.1\t{node.hostname}\n"
        )
        mid = upper / "etc/machine-id"
        mid.write_text(secrets.token_hex(16) + "\n")
        os.chmod(mid, 0o444)
        for kt in ("ed25519", "ecdsa"):
            _run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    kt,
                    "-N",
                    "",
                    "-C",
                    f"root@{node.hostname}",
                    "-f",
                    str(upper / f"etc/ssh/ssh_host_{kt}_key"),
                ]
            )
        node.host_key_fingerprint = _fingerprint(upper / "etc/ssh/ssh_host_ed25519_key.pub")
        # pi's authorized key
        ssh_dir = upper / "home/pi/.ssh"
        ssh_dir.mkdir(parents=True)
        (ssh_dir / "authorized_keys").write_text(Path(str(self.key_path) + ".pub").read_text())
        uid, gid = 1000, 1000
        for p in (upper / "home/pi", ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(p, uid, gid)
        os.chmod(upper / "home/pi", 0o755)
        os.chmod(ssh_dir, 0o700)
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        # A node that reboots itself (prepare's reboot) must not hang in shutdown: in these containers the
        # per-user systemd manager (started by pam_systemd for an SSH login) sometimes never finishes stopping,
        # which holds the reboot for its 2-minute stop timeout. Bound it; a real Pi does not need this.
        (upper / "etc/systemd/system/user@.service.d").mkdir(parents=True)
        (upper / "etc/systemd/system/user@.service.d/piml-test.conf").write_text(
            "# piml test node: bound the user manager's stop (see tests/nodes/README.md)\n[Service]\nTimeoutStopSec=3s\n"
        )
        # systemd-user-sessions removes /run/nologin; until it has, every login is refused. It has failed
        # under load (CI): let systemd retry it, as wait_ssh would, also after a reboot nobody watches.
        (upper / "etc/systemd/system/systemd-user-sessions.service.d").mkdir(parents=True)
        (upper / "etc/systemd/system/systemd-user-sessions.service.d/piml-test.conf").write_text(
            "# piml test node: retry a failed start (see tests/nodes/README.md)\n[Service]\nRestart=on-failure\nRestartSec=1s\n"
        )
        (upper / "etc/systemd/system.conf.d").mkdir(parents=True)
        (upper / "etc/systemd/system.conf.d/piml-test.conf").write_text(
            "# piml test node: no unit may hold a shutdown for long (see tests/nodes/README.md)\n"
            "[Manager]\nDefaultTimeoutStopSec=5s\n"
        )
        # time sync only towards the host's bridge address (nothing listens there; it never leaves the box)
        (upper / "etc/systemd/timesyncd.conf.d/piml-test.conf").write_text(
            f"# piml test node: only the test bridge\n[Time]\nNTP={self.gateway}\nFallbackNTP=\n"
        )
        # what a Raspberry Pi has in /boot/firmware
        partuuid = secrets.token_hex(4)
        (upper / "boot/firmware/cmdline.txt").write_text(
            f"console=serial0,115200 console=tty1 root=PARTUUID={partuuid}-02 rootfstype=ext4 "
            f"fsck.repair=yes rootwait\n"
        )
        (upper / "boot/firmware/config.txt").write_text(CONFIG_TXT)
        # device tree -> bound at /sys/firmware in the node
        info = MODELS[node.model]
        if info is not None:
            model, compatible, _oui = info
            base = d / "hw/firmware/devicetree/base"
            base.mkdir(parents=True)
            (base / "model").write_bytes(model.encode() + b"\0")
            (base / "compatible").write_bytes(b"".join(c.encode() + b"\0" for c in compatible))
            (base / "serial-number").write_bytes(f"10000000{secrets.token_hex(4)}".encode() + b"\0")
            # thermal zone -> bound at /sys/class/thermal in the node
            tz = d / "hw/thermal/thermal_zone0"
            tz.mkdir(parents=True)
            (tz / "type").write_text("cpu-thermal\n")
            (tz / "temp").write_text("48312\n")
        (d / "piml-test/throttled").write_text("0x0\n")
        (d / "piml-test/README").write_text("Values for test stand-ins (vcgencmd); written by tests/nodes.\n")

    def _plumb(self, node: Node) -> None:
        """netns + veth pair into the bridge. Address configured from the host; no default route."""
        ns = node.netns
        if not Path(f"/run/netns/{ns}").exists():
            _run(["ip", "netns", "add", ns])
        if not _link_exists(node.host_veth):
            info = MODELS[node.model]
            oui = info[2] if info else "02:00:5e"
            mac = f"{oui}:{self.instance:02x}:00:{node.index:02x}"
            _run(["ip", "link", "add", node.host_veth, "type", "veth", "peer", "name", "eth0", "netns", ns])
            _run(["ip", "-n", ns, "link", "set", "eth0", "address", mac])
        _sysctl_disable_ipv6(node.host_veth)
        _sysctl_disable_ipv6("all", ns)
        _run(["ip", "link", "set", node.host_veth, "master", self.bridge, "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "addr", "replace", f"{node.address}/24", "dev", "eth0"])
        _run(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def _spawn(self, node: Node) -> None:
        d = self._node_dir(node.name)
        root = d / "root"
        if str(root) not in _mounts_under(d):
            _run(
                [
                    "mount",
                    "-t",
                    "overlay",
                    "overlay",
                    "-o",
                    f"lowerdir={self._rootfs or rootfs_path()},upperdir={d / 'upper'},workdir={d / 'work'}",
                    str(root),
                ]
            )
        argv = [
            "systemd-nspawn",
            f"--machine={node.machine}",
            f"--directory={root}",
            f"--hostname={node.hostname}",
            "--boot",
            "--register=no",
            "--keep-unit",
            f"--network-namespace-path=/run/netns/{node.netns}",
            # root on a real machine may change its routes (piml's ray-external units do); the namespace is the node's
            "--capability=CAP_NET_ADMIN",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
            "--console=read-only",
            f"--bind-ro={d / 'hw/firmware'}:/sys/firmware",
            f"--bind-ro={d / 'hw/thermal'}:/sys/class/thermal",
            f"--bind={d / 'piml-test'}:/etc/piml-test",
        ]
        console = open(d / "console.log", "ab")
        console.write(f"\n==== piml testnodes: boot at {time.ctime()} ====\n".encode())
        console.flush()
        env = dict(os.environ, SYSTEMD_LOG_COLOR="0")
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=console, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        self._procs[node.name] = proc
        console.close()
        threading.Thread(
            target=self._restart_on_reboot, args=(node, proc), daemon=True, name=f"reboot-watch-{node.name}"
        ).start()

    def _restart_on_reboot(self, node: Node, proc: subprocess.Popen) -> None:
        """A node that reboots itself (`reboot`, Ansible's reboot module) makes systemd-nspawn exit with
        133; boot it again on the same disk, as systemd-nspawn@.service does (RestartForceExitStatus=133).
        Works while the process that booted the node lives (pytest, benchmarks), not for CLI `up` nodes."""
        if proc.wait() != REBOOT_EXIT_CODE or node.name in self._stopping or self._procs.get(node.name) is not proc:
            return
        self.log(f"[testnodes] {node.name} rebooted itself: booting it again")
        try:
            self._spawn(node)
            # the same readiness as a first boot, so a login refused after the reboot is mended here too
            self.wait_ssh(node)
        except Exception as exc:  # noqa: BLE001 - a daemon thread: report, the test sees the node down
            self.log(f"[testnodes] {node.name}: boot after reboot failed: {exc}")

    # ---- observing -----------------------------------------------------------------------------

    def nspawn_pid(self, node: Node) -> int | None:
        proc = self._procs.get(node.name)
        if proc is not None and proc.poll() is None:
            return proc.pid
        return _nspawn_pids(node.machine).get(node.machine)

    def leader_pid(self, node: Node) -> int | None:
        """Host pid of the node's PID 1 (systemd)."""
        pid = self.nspawn_pid(node)
        if pid is None:
            return None
        kids = [k for k in _children(pid) if _pid_alive(k)]
        return kids[0] if kids else None

    def is_running(self, node: Node) -> bool:
        return self.nspawn_pid(node) is not None

    def console_tail(self, node: Node, lines: int = 40) -> str:
        return _tail(self._node_dir(node.name) / "console.log", lines)

    def journal_tail(self, node: Node, lines: int = 40) -> str:
        if self.leader_pid(node) is None:
            return "(node not running)"
        r = self.run(node, f"journalctl --no-pager -n {lines}", check=False, timeout=15)
        return r.stdout + r.stderr

    def wait_ssh(self, node: Node, timeout: float | None = None) -> None:
        """Wait (bounded) until sshd on the node answers and logins are allowed; raise with console/journal
        tail if not. sshd is up before systemd-user-sessions removes /run/nologin, and until then pam_nologin
        refuses the pi user ("System is booting up"); under load that window is long enough to fail a test."""
        deadline = time.monotonic() + (timeout or self.boot_timeout)
        sshd_since = 0.0  # when sshd first answered
        while time.monotonic() < deadline:
            if not self.is_running(node):
                raise SubstrateError(
                    f"node {node.name}: systemd-nspawn exited during boot\n"
                    f"--- console tail ---\n{self.console_tail(node)}"
                )
            if port_open(node.address, node.port, timeout=1.0):
                if self.run(node, "test ! -e /run/nologin", check=False, timeout=10).returncode == 0:
                    return
                sshd_since = sshd_since or time.monotonic()
                stuck = time.monotonic() - sshd_since > self.login_grace
                self._retry_user_sessions(node, stuck=stuck)
                if stuck:
                    sshd_since = time.monotonic()  # give that start its own grace before the next
            time.sleep(0.2)
        raise SubstrateError(
            f"node {node.name} ({node.address}): sshd not answering after "
            f"{timeout or self.boot_timeout:.0f}s\n--- console tail ---\n{self.console_tail(node)}"
            f"\n--- journal tail ---\n{self.journal_tail(node)}"
        )

    def _retry_user_sessions(self, node: Node, stuck: bool = False) -> None:
        """Under heavy load systemd-user-sessions has failed in a node (seen once in CI), leaving /run/nologin
        and every login refused; start it again (it only removes that file) and say so. `stuck`: sshd has
        answered for a while and the unit has still not run (a dependency's job failed, say): start it too."""
        failed = (
            self.run(node, "systemctl is-failed --quiet systemd-user-sessions", check=False, timeout=10).returncode == 0
        )
        if failed or stuck:
            why = self.run(
                node, "journalctl -u systemd-user-sessions --no-pager -o cat -n 5", check=False, timeout=10
            ).stdout
            state = "failed" if failed else "has not run"
            _log(
                f"{node.name}: systemd-user-sessions {state}, starting it again ({' | '.join(why.split(chr(10))[-5:])})"
            )
            self.run(node, "systemctl restart systemd-user-sessions", check=False, timeout=30)

    # ---- running commands ----------------------------------------------------------------------

    def run(
        self,
        node: Node,
        cmd: str,
        user: str = "root",
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a shell command inside the node from the host, via nsenter into its namespaces.

        Works while the link is cut or sshd is down; needs the node running.
        """
        leader = self.leader_pid(node)
        if leader is None:
            raise SubstrateError(f"node {node.name} is not running")
        inner = ["/bin/sh", "-c", cmd] if user == "root" else ["runuser", "-u", user, "--", "/bin/sh", "-c", cmd]
        argv = [
            "nsenter",
            "-t",
            str(leader),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "-C",
            "-r",
            "-w",
            "env",
            "-i",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            f"HOME={'/root' if user == 'root' else '/home/' + user}",
            "LANG=C.UTF-8",
            *inner,
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise SubstrateError(
                f"node {node.name}: command failed ({proc.returncode}): {cmd}\n{proc.stdout}{proc.stderr}"
            )
        return proc

    def ssh(
        self, node: Node, cmd: str, check: bool = True, timeout: float = 60, user: str | None = None
    ) -> subprocess.CompletedProcess:
        """Run a command over real SSH as pi (with the test key and strict host key checking)."""
        proc = subprocess.run(
            node.ssh_argv(cmd, user=user), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
        if check and proc.returncode != 0:
            raise SubstrateError(
                f"node {node.name}: ssh command failed ({proc.returncode}): {cmd}\n{proc.stdout}{proc.stderr}"
            )
        return proc

    # ---- faults --------------------------------------------------------------------------------

    def stop(self, node: Node, hard: bool = False, timeout: float = STOP_TIMEOUT) -> None:
        """Power the node off: clean shutdown (SIGTERM to nspawn -> systemd halts), or hard=True: kill its
        PID 1 with SIGKILL (like pulling the plug). Its disk (overlay upper) is kept for start()."""
        self.dirty.add(node.name)
        self._stopping.add(node.name)
        try:
            self._stop(node, hard, timeout)
        finally:
            self._stopping.discard(node.name)

    def _stop(self, node: Node, hard: bool, timeout: float) -> None:
        pid = self.nspawn_pid(node)
        if pid is not None:
            leader = self.leader_pid(node)
            if hard and leader:
                _kill(leader, signal.SIGKILL)
            else:
                _kill(pid, signal.SIGTERM)
            if not _wait_dead([pid], timeout):
                leader = self.leader_pid(node)
                if leader:
                    _kill(leader, signal.SIGKILL)
                _kill(pid, signal.SIGKILL)
                _wait_dead([pid], 10)
        proc = self._procs.pop(node.name, None)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for mp in _mounts_under(self._node_dir(node.name)):
            _umount(mp)
        shutil.rmtree(NSPAWN_RUN / "propagate" / node.machine, ignore_errors=True)

    def start(self, node: Node, wait: bool = True) -> None:
        """Boot a stopped node again (same disk, same address)."""
        if self.is_running(node):
            return
        if self._rootfs is None:
            self.setup()
        self._plumb(node)
        self._spawn(node)
        if wait:
            self.wait_ssh(node)

    def reboot(self, node: Node) -> None:
        self.stop(node)
        self.start(node)

    def destroy(self, node: Node) -> None:
        """Stop the node and remove its netns, veth and files."""
        self.stop(node)
        _run(["ip", "link", "del", node.host_veth], check=False)
        _run(["ip", "netns", "del", node.netns], check=False)
        shutil.rmtree(self._node_dir(node.name), ignore_errors=True)
        self.nodes.pop(node.name, None)
        self.dirty.discard(node.name)
        self._save_state()

    def cut_link(self, node: Node) -> None:
        """Unplug the node's cable (host side of its veth down: no carrier in the node)."""
        self.dirty.add(node.name)
        _run(["ip", "link", "set", node.host_veth, "down"])

    def restore_link(self, node: Node) -> None:
        _run(["ip", "link", "set", node.host_veth, "up"])

    def new_host_key(self, node: Node) -> str:
        """Regenerate the node's SSH host keys and restart sshd (like a reinstalled Pi). Returns the new
        ed25519 fingerprint and updates the substrate's known_hosts."""
        self.dirty.add(node.name)
        self.run(
            node,
            "rm -f /etc/ssh/ssh_host_*"
            " && ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key"
            " && ssh-keygen -q -t ecdsa -N '' -f /etc/ssh/ssh_host_ecdsa_key"
            " && systemctl restart ssh.service",
        )
        node.host_key_fingerprint = _fingerprint(self._node_dir(node.name) / "upper/etc/ssh/ssh_host_ed25519_key.pub")
        self._save_state()
        self.wait_ssh(node, timeout=30)
        return node.host_key_fingerprint

    def require_sudo_password(self, node: Node, password: str = "raspberry") -> None:
        """Make sudo ask pi for a password (removes 010_pi-nopasswd; pi's password is set to `password`)."""
        self.dirty.add(node.name)
        self.run(node, "rm -f /etc/sudoers.d/010_pi-nopasswd && chpasswd", input=f"pi:{password}\n")

    def allow_sudo_nopasswd(self, node: Node) -> None:
        self.run(
            node,
            "echo 'pi ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/010_pi-nopasswd"
            " && chmod 0440 /etc/sudoers.d/010_pi-nopasswd",
        )

    def set_throttled(self, node: Node, value: str | int) -> None:
        """What the stand-in `vcgencmd get_throttled` answers, e.g. "0x50005"."""
        self.dirty.add(node.name)
        text = hex(value) if isinstance(value, int) else str(value)
        if not re.fullmatch(r"0x[0-9a-fA-F]+", text):
            raise ValueError("throttled value must look like 0x50005")
        _atomic_write(self._node_dir(node.name) / "piml-test/throttled", text + "\n")

    def set_temperature(self, node: Node, millidegrees: int) -> None:
        """What /sys/class/thermal/thermal_zone0/temp reads in the node."""
        self.dirty.add(node.name)
        path = self._node_dir(node.name) / "hw/thermal/thermal_zone0/temp"
        if not path.parent.exists():
            raise SubstrateError(f"node {node.name} (model {node.model}) has no thermal zone")
        path.write_text(f"{int(millidegrees)}\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fingerprint(pub: Path) -> str:
    out = _run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(pub)]).stdout
    return out.split()[1]


def port_open(address: str, port: int = 22, timeout: float = 2.0) -> bool:
    """True if something accepts a TCP connection there and (for 22) sends an SSH banner."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as s:
            if port != 22:
                return True
            s.settimeout(timeout)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def cleanup_stale(instance: int | None = None, log=_log) -> None:
    """Remove everything test nodes leave behind, by name prefix: nspawn processes, overlay mounts,
    network namespaces (and so the veth pairs), bridges, run dirs. instance=None: all instances."""
    inst = "" if instance is None else str(instance)
    prefix = f"{PREFIX}{inst}"
    # 1. processes: ask nicely, then kill
    pids = _nspawn_pids(prefix)
    if pids:
        log(f"[testnodes] stopping {len(pids)} node(s): {', '.join(sorted(pids))}")
    for pid in pids.values():
        _kill(pid, signal.SIGTERM)
    if not _wait_dead(pids.values(), STOP_TIMEOUT):
        for pid in pids.values():
            for kid in _children(pid):
                _kill(kid, signal.SIGKILL)
            _kill(pid, signal.SIGKILL)
        _wait_dead(pids.values(), 10)
    # anything still living in our network namespaces
    netns_dir = Path("/run/netns")
    namespaces = sorted(p.name for p in netns_dir.glob(f"{prefix}*")) if netns_dir.exists() else []
    for ns in namespaces:
        r = _run(["ip", "netns", "pids", ns], check=False)
        for p in r.stdout.split():
            _kill(int(p), signal.SIGKILL)
    # 2. mounts
    roots = [RUN_ROOT / inst] if inst else [RUN_ROOT]
    for root in roots:
        for mp in _mounts_under(root):
            _umount(mp)
    # 3. network
    for ns in namespaces:
        _run(["ip", "netns", "del", ns], check=False)
    for link in sorted(os.listdir("/sys/class/net")):
        if re.fullmatch(rf"{VETH_PREFIX}{inst or '[0-9]'}v\d+", link) or re.fullmatch(
            rf"{BRIDGE_PREFIX}{inst or '[0-9]'}", link
        ):
            _run(["ip", "link", "del", link], check=False)
    # 4. files
    for root in roots:
        if root.exists() and not _mounts_under(root):
            shutil.rmtree(root, ignore_errors=True)
    for p in (NSPAWN_RUN / "propagate").glob(f"{prefix}*") if (NSPAWN_RUN / "propagate").exists() else []:
        shutil.rmtree(p, ignore_errors=True)
