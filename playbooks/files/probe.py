# Run on a node by tasks/probe.yml (`python3 -c <this file> '<want as JSON>'`): one round trip that reads what
# the playbooks decide on, and, when asked, whether the node is already in the wanted state.
# Read-only. Prints one JSON object. Python 3 standard library only (Raspberry Pi OS / Debian python3).
#
# want (all optional):
#   prepare: what prepare.yml would make true (hostname, /etc/hosts line, cmdline flags, config.txt block,
#            swap, modules, sysctls, packages); the answer's `prepare_differs` lists what is not so yet, and
#            `pages_block` whether config.txt holds piml's 4 KB pages block. The block belongs on a Pi 5 only
#            where 4 KB pages are wanted, kernel8.img is next to config.txt and the node runs 16 KB pages (or
#            already runs 4 KB pages through that block): pages_4k() here, `_pages_4k` in prepare.yml.
#   k3s:     {unit, hash: [paths or globs], port: bool, ready: bool}; the answer's `k3s` holds what k3s.yml compares
#            (installed version, unit file, marker, config.yaml checksum and mode, directories, checksums of
#            the given files, unit state, port 6443, and on the first server the Ready node names).
# Every check errs on the side of "differs": anything unusual makes the playbook take its normal path.
# piml itself loads this file too (piml/facts/parsers.py) for the one rule of "the memory cgroup is on",
# memory_cgroup_state(): so main() runs only as a program (`python3 -c` runs it as __main__).
import glob
import hashlib
import json
import os
import platform
import re
import socket
import stat
import subprocess
import sys


def read_bytes(path):
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError:
        return None


def read(path):
    data = read_bytes(path)
    return None if data is None else data.decode(errors="replace")


def cgroup_v1_controllers(text):
    """/proc/cgroups -> {controller: enabled and bound to a v1 hierarchy}. The columns are subsys_name,
    hierarchy, num_cgroups, enabled; hierarchy is 0 when the controller is on no v1 hierarchy (unmounted, on
    the v2 one, cgroup_no_v1=, or disabled: man 7 cgroups). Kernel 6.12 may list no memory row at all."""
    result = {}
    for line in (text or "").splitlines():
        words = line.split()
        if line.startswith("#") or len(words) < 4 or not (words[1].isdigit() and words[3].isdigit()):
            continue
        result[words[0]] = words[1] != "0" and words[3] != "0"
    return result


def memory_cgroup_state(controllers, v1):
    """THE rule for "the memory cgroup is on", as k3s decides it (pkg/cgroups: validateCgroupsV2 / V1), shared
    by this probe and piml's facts (piml/facts/parsers.py loads this file). Returns (cgroup version, on).

    controllers: the words of /sys/fs/cgroup/cgroup.controllers, or None when there is no such file (no
    unified hierarchy at /sys/fs/cgroup: v1, or hybrid with v2 at /sys/fs/cgroup/unified). v1: what
    cgroup_v1_controllers() made of /proc/cgroups. On v2 the file alone decides (k3s reads the root's
    controllers; /proc/cgroups still says enabled=1 for a controller the node cannot use, e.g. one not
    delegated to a container). Only what the running kernel reports counts, never the cmdline's
    cgroup_enable=/cgroup_disable=: their order and defaults are the kernel's business (Raspberry Pi
    kernels disable memory unless cgroup_enable=memory). (None, None): nothing to tell from."""
    if controllers is not None:
        return 2, "memory" in controllers
    if "memory" in v1:
        return 1, v1["memory"]
    return (1, False) if v1 else (None, None)


def memory_cgroup(root="/"):
    """memory_cgroup_state() of the node under root (tests point it at a fake /sys and /proc)."""
    controllers = read(os.path.join(root, "sys/fs/cgroup/cgroup.controllers"))
    v1 = cgroup_v1_controllers(read(os.path.join(root, "proc/cgroups")))
    return memory_cgroup_state(None if controllers is None else controllers.split(), v1)


def run(argv):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, universal_newlines=True)
    except OSError:
        return None


def regular(path):
    """(sha1 or None, mode) of a regular file (not a link), else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st


def sha1(path):
    digest = hashlib.sha1()
    try:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def file_is(path, content, mode):
    """What `copy: dest=path content=... mode=...` would leave unchanged."""
    st = regular(path)
    if st is None or stat.S_IMODE(st.st_mode) != int(mode, 8):
        return False
    return read_bytes(path) == content.encode()


def dir_is(path, mode):
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == int(mode, 8)


def pages_block(boot, markers):
    """Whether config.txt holds piml's block (both marker lines), as blockinfile finds it; False when unknown."""
    if not boot or not isinstance(markers, list) or len(markers) != 2 or not all(isinstance(m, str) for m in markers):
        return False
    lines = (read_bytes(boot + "/config.txt") or b"").splitlines(True)
    return all((marker.encode() + b"\n") in lines for marker in markers)


def pages_4k(want_4k, node):
    """Whether piml's kernel=kernel8.img block belongs in config.txt (prepare.yml's `_pages_4k`, same rule):
    only on a Pi 5, only when 4 KB pages are wanted, only when kernel8.img is there to boot (Ubuntu boots
    vmlinuz and has none), and only while the node runs 16 KB pages, or already runs 4 KB pages through
    piml's block (which is then kept)."""
    return bool(want_4k and node["kind"] == "pi5" and node["boot_dir"] and node["kernel8"]
                and (node["page_size"] == 16384 or node["pages_block"]))


def prepare_differs(want, node):
    """What prepare.yml would still change (or fail on) on this node; empty when nothing."""
    differs = []
    name = want.get("hostname")
    if name:
        if socket.gethostname() != name or (read("/etc/hostname") or "").strip() != name:
            differs.append("hostname")
        hosts = read_bytes("/etc/hosts")  # as lineinfile reads it: bytes, lines split at \n only
        pattern = re.compile(want["hosts_regexp"].encode())
        matches = [line for line in re.findall(b"[^\n]*\n|[^\n]+$", hosts or b"") if pattern.search(line)]
        if hosts is None or not matches or matches[-1] != (want["hosts_line"] + "\n").encode():
            differs.append("/etc/hosts")
    boot = node["boot_dir"]
    if boot:
        words = (read(boot + "/cmdline.txt") or "").split()
        if any(flag not in words for flag in want["cgroup_flags"]):
            differs.append("cmdline.txt")
        if node["kind"] == "pi5":
            text = read_bytes(boot + "/config.txt")  # as blockinfile reads it
            begin, end = (marker.encode() for marker in want["config_markers"])
            lines = (text or b"").splitlines(True)
            if text is None:
                differs.append("config.txt")
            elif pages_4k(want["want_4k"], node):
                block = [begin + b"\n"] + want["config_block"].encode().splitlines(True) + [end + b"\n"]
                if lines.count(begin + b"\n") != 1 or lines.count(end + b"\n") != 1:
                    differs.append("config.txt")
                elif lines[lines.index(begin + b"\n"):lines.index(begin + b"\n") + len(block)] != block:
                    differs.append("config.txt")
            elif begin + b"\n" in lines or end + b"\n" in lines or (text and not text.endswith(b"\n")):
                differs.append("config.txt")
    if not node["memory_cgroup"]:
        differs.append("memory cgroup")
    if pages_4k(want["want_4k"], node) and node["page_size"] != 4096:
        differs.append("page size")
    if node["swap_active"]:
        differs.append("swap")
    if node["dphys_swapfile"]:
        enabled = run(["systemctl", "is-enabled", "dphys-swapfile"])
        active = run(["systemctl", "is-active", "dphys-swapfile"])
        sysv = [n for d in ("rc2.d", "rc3.d", "rc4.d", "rc5.d", "rcS.d") if os.path.isdir("/etc/" + d)
                for n in os.listdir("/etc/" + d) if n.startswith("S") and n.endswith("dphys-swapfile")]
        if (enabled is None or enabled.stdout.strip() != "disabled" or sysv
                or active is None or active.stdout.strip() not in ("inactive", "failed")):
            differs.append("dphys-swapfile")
    fstab = read("/etc/fstab")
    if fstab is None or re.search(want["fstab_regexp"], fstab, re.MULTILINE):
        differs.append("/etc/fstab")
    for path, content in sorted(want["files"].items()):
        if not file_is(path, content, "0644"):
            differs.append(path)
    for module in want["modules"]:
        if not (os.path.isdir("/sys/module/" + module)
                or re.search(r"^" + re.escape(module) + r"\b", read("/proc/modules") or "", re.MULTILINE)
                or (module == "br_netfilter" and os.path.isdir("/proc/sys/net/bridge"))):
            differs.append("module " + module)
    for key, value in sorted(want["sysctls"].items()):
        path = "/proc/sys/" + key.replace(".", "/")
        current = read(path)
        if current is None or current.strip() == str(value):
            continue
        if not (node["container"] and not os.access(path, os.W_OK)):  # in a container the host owns it
            differs.append("sysctl " + key)
    for package in want["packages"]:
        answer = run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", package])
        if answer is None or answer.returncode != 0 or not answer.stdout.startswith("ii"):
            differs.append("package " + package)
    return differs


def k3s_state(want):
    unit = want["unit"]
    answer = {}
    version = run(["/usr/local/bin/k3s", "--version"]) if os.access("/usr/local/bin/k3s", os.X_OK) else None
    match = re.match(r"k3s version (\S+)", version.stdout if version is not None else "")
    answer["version"] = match.group(1) if match else ""
    answer["unit_file"] = os.path.isfile("/etc/systemd/system/%s.service" % unit)
    answer["marker"] = read("/etc/rancher/k3s/piml-install")
    active = run(["systemctl", "is-active", unit])
    answer["active"] = active.stdout.strip() if active is not None else ""
    st = regular("/etc/rancher/k3s/config.yaml")
    answer["config"] = {"sha1": sha1("/etc/rancher/k3s/config.yaml"), "mode": "%04o" % stat.S_IMODE(st.st_mode)} if st else None
    answer["dirs"] = all(dir_is(path, "0755") for path in ("/etc/rancher/k3s", "/var/lib/rancher/k3s/agent/images"))
    files = {}
    for path in sorted(set(p for pattern in want.get("hash", []) for p in (glob.glob(pattern) if "*" in pattern else [pattern]))):
        st = regular(path)
        files[path] = {"sha1": sha1(path), "mode": "%04o" % stat.S_IMODE(st.st_mode)} if st else None
    answer["files"] = files
    answer["port"] = None
    if want.get("port"):
        try:
            socket.create_connection(("127.0.0.1", 6443), timeout=2).close()
            answer["port"] = True
        except OSError:
            answer["port"] = False
    answer["ready"] = None
    if want.get("ready") and answer["active"] == "active" and answer["port"]:
        nodes = run(["/usr/local/bin/k3s", "kubectl", "get", "nodes", "-o", "json"])
        try:
            items = json.loads(nodes.stdout)["items"] if nodes is not None and nodes.returncode == 0 else []
        except ValueError:
            items = []
        answer["ready"] = sorted(
            item["metadata"]["name"] for item in items
            if any(c.get("type") == "Ready" and c.get("status") == "True" for c in item.get("status", {}).get("conditions", [])))
    return answer


def main():
    want = json.loads(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] else {}
    model = (read("/proc/device-tree/model") or read("/sys/firmware/devicetree/base/model") or "").strip("\0 \n")
    boot = next((d for d in ("/boot/firmware", "/boot") if os.path.isfile(d + "/cmdline.txt")), "")
    swaps = [line for line in (read("/proc/swaps") or "").splitlines()[1:] if line.strip()]
    detect = run(["systemd-detect-virt", "--container", "--quiet"])
    node = {
        "model": model,
        "kind": "pi5" if "Raspberry Pi 5" in model else "cm4" if "Compute Module 4" in model else "other",
        "boot_dir": boot,
        # the firmware loads the kernel from the boot partition, next to config.txt (Ubuntu has vmlinuz there)
        "kernel8": bool(boot) and os.path.isfile(boot + "/kernel8.img"),
        "memory_cgroup": memory_cgroup()[1] is True,
        "page_size": os.sysconf("SC_PAGESIZE"),
        "swap_active": len(swaps),
        "dphys_swapfile": os.path.exists("/lib/systemd/system/dphys-swapfile.service") or os.path.exists("/etc/systemd/system/dphys-swapfile.service"),
        "container": detect is not None and detect.returncode == 0,
        "arch": {"aarch64": "arm64", "x86_64": "amd64"}.get(platform.machine(), platform.machine()),
        "hostname": socket.gethostname(),
    }
    node["pages_block"] = pages_block(boot, (want.get("prepare") or {}).get("config_markers"))
    # A check that breaks (something unforeseen on the node) only means "differs": the tasks then decide.
    if "prepare" in want:
        try:
            node["prepare_differs"] = prepare_differs(want["prepare"], node)
        except Exception as exc:  # noqa: BLE001
            node["prepare_differs"] = ["probe: %s: %s" % (type(exc).__name__, exc)]
    if "k3s" in want:
        try:
            node["k3s"] = k3s_state(want["k3s"])
        except Exception as exc:  # noqa: BLE001
            node["k3s"] = {"version": "", "unit_file": False, "marker": None, "active": "", "config": None, "dirs": False,
                           "files": {}, "port": None, "ready": None, "error": "%s: %s" % (type(exc).__name__, exc)}
    print("PIML-PROBE " + json.dumps(node))


if __name__ == "__main__":
    main()
