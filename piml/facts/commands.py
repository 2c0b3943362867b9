"""The shell side of node facts: one POSIX sh script that prints every fact between markers.

A fact is a shell snippet here plus a pure parser in `piml.facts.parsers`. `gather_script()` joins
the snippets into ONE script, run once per node (one SSH round trip). It must run under dash and
busybox ash: no bashisms, no `set -e`, every section tolerates missing files and commands, and
the script always exits 0. Files are read with the `read` builtin rather than `cat`, so the whole
script forks only a handful of processes (uname, getconf, df, date, awk, and on a node that has them
systemctl, timedatectl, vcgencmd, k3s, sudo).

The output is a sequence of sections, each introduced by a line `@@piml:NAME@@` (preceded by a
newline, so a file without a final newline cannot swallow the next marker), and closed by
`@@piml:end@@`: a missing end marker means the output was cut short.
"""

from __future__ import annotations

import shlex

MARKER_PREFIX = "@@piml:"
MARKER_SUFFIX = "@@"
END = "end"

# Shared helpers. `rd FILE` prints a file with builtins only (keeps a last line that has no
# newline; NUL bytes are dropped or kept depending on the shell, so parsers strip them).
PREAMBLE = r"""LC_ALL=C; export LC_ALL
PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"; export PATH
set -f
cd / 2>/dev/null
T=; command -v timeout >/dev/null 2>&1 && T="timeout 10"
has() { command -v "$1" >/dev/null 2>&1; }
rd() { [ -r "$1" ] || return 1; while IFS= read -r l || [ -n "$l" ]; do printf '%s\n' "$l"; done < "$1"; }
first() { for f in "$@"; do if [ -r "$f" ]; then rd "$f"; return 0; fi; done; return 1; }
m() { printf '\n@@piml:%s@@\n' "$1"; }"""

# (name, snippet) in output order. Names are [a-z0-9_]+; parsers.py has one parser per name.
SECTIONS: tuple[tuple[str, str], ...] = (
    ("hostname", "rd /proc/sys/kernel/hostname || hostname 2>/dev/null || uname -n 2>/dev/null"),
    ("model", "first /proc/device-tree/model /sys/firmware/devicetree/base/model"),
    ("arch", "uname -m 2>/dev/null"),
    ("kernel", "rd /proc/sys/kernel/osrelease || uname -r 2>/dev/null"),
    ("os_release", "first /etc/os-release /usr/lib/os-release"),
    (
        "cpus",
        r"""if [ -r /sys/devices/system/cpu/online ]; then printf 'online='; rd /sys/devices/system/cpu/online
else printf 'count='; getconf _NPROCESSORS_ONLN 2>/dev/null; fi""",
    ),
    ("meminfo", "rd /proc/meminfo"),
    ("pagesize", "getconf PAGESIZE 2>/dev/null || getconf PAGE_SIZE 2>/dev/null"),
    (
        # Every mount on `/` (the last one is in effect), its block device resolved through sysfs
        # (`cd -P` + $PWD: no readlink fork), the whole disk behind a partition, an MMC card's type.
        "rootfs",
        r"""[ -r /proc/self/mountinfo ] && while IFS= read -r l; do
  set -- $l
  [ "$5" = / ] || continue
  printf 'mount=%s\n' "$l"
  if cd -P "/sys/dev/block/$3" 2>/dev/null; then
    p=$PWD; cd /
    printf 'sysfs=%s\n' "$p"
    [ -e "$p/partition" ] && p=${p%/*}
    printf 'disk=%s\n' "${p##*/}"
    if [ -r "$p/device/type" ]; then printf 'mmc_type='; rd "$p/device/type"; fi
  fi
done < /proc/self/mountinfo""",
    ),
    ("df", "df -Pk / 2>/dev/null"),
    (
        "cgroup",
        r"""if [ -r /sys/fs/cgroup/cgroup.controllers ]; then
  c=; read -r c < /sys/fs/cgroup/cgroup.controllers; printf 'controllers=%s\n' "$c"
fi""",
    ),
    ("proc_cgroups", "rd /proc/cgroups"),
    ("cmdline", "rd /proc/cmdline"),
    (
        "boot_cmdline",
        r"""for f in /boot/firmware/cmdline.txt /boot/cmdline.txt; do
  if [ -e "$f" ]; then printf 'path=%s\n' "$f"; rd "$f"; break; fi
done""",
    ),
    (
        # The Pi 5's 4 KB-page kernel, next to that cmdline.txt (the firmware boots from that partition).
        # Raspberry Pi OS has it; Ubuntu for Pi boots vmlinuz and has none.
        "boot_kernel8",
        r"""for d in /boot/firmware /boot; do
  if [ -e "$d/cmdline.txt" ]; then
    if [ -f "$d/kernel8.img" ]; then echo kernel8=yes; else echo kernel8=no; fi; break
  fi
done""",
    ),
    ("swaps", "rd /proc/swaps"),
    (
        "dphys_swapfile",
        r"""if [ -r /etc/dphys-swapfile ]; then echo present=yes
  while IFS= read -r l; do case $l in CONF_SWAPFILE=*) printf '%s\n' "$l";; esac; done < /etc/dphys-swapfile
fi""",
    ),
    (
        "services",
        "has systemctl && $T systemctl show -p Id -p LoadState -p ActiveState -p SubState -p UnitFileState"
        " k3s.service k3s-agent.service 2>/dev/null",
    ),
    (
        # Listening TCP sockets (state 0A) as the kernel lists them: `file=tcp|tcp6` for each table read,
        # then its local addresses in hex. One awk per table (a busy k3s node has thousands of connections,
        # which the shell's byte-by-byte `read` would crawl through); the shell loop only without awk.
        "listening",
        r"""for f in tcp tcp6; do
  [ -r /proc/net/$f ] || continue
  echo "file=$f"
  if has awk; then awk '$4 == "0A" { print $2 }' /proc/net/$f 2>/dev/null
  else while read -r a b c d e; do [ "$d" = 0A ] && printf '%s\n' "$b"; done < /proc/net/$f; fi
done""",
    ),
    (
        "timesync",
        # timesyncd keeps its state in /run (no D-Bus, no process); timedatectl would wake
        # systemd-timedated, ~80 ms on a small board, so it is only the last resort.
        r"""if [ -e /run/systemd/timesync/synchronized ]; then echo source=timesyncd; echo yes
elif [ -d /run/systemd/timesync ]; then echo source=timesyncd; echo no
elif has chronyc; then echo source=chronyc; $T chronyc -n tracking 2>/dev/null
elif has timedatectl; then echo source=timedatectl; $T timedatectl show -p NTPSynchronized --value 2>/dev/null; fi""",
    ),
    ("epoch", "date +%s 2>/dev/null"),
    ("temperature", "rd /sys/class/thermal/thermal_zone0/temp"),
    (
        # `exit=N` and what vcgencmd printed (stderr too: the reason when it fails); when it fails for a user
        # other than root (/dev/vcio is the video group's), again with `sudo -n` (never prompts): `sudo_exit=N`.
        "throttled",
        r"""if has vcgencmd; then
  o=$($T vcgencmd get_throttled 2>&1 </dev/null); r=$?
  printf 'exit=%s\n' "$r"; [ -n "$o" ] && printf '%s\n' "$o"
  if [ "$r" != 0 ] && [ "$(id -u 2>/dev/null)" != 0 ]; then
    o=$($T sudo -n vcgencmd get_throttled 2>&1 </dev/null); r=$?
    printf 'sudo_exit=%s\n' "$r"; [ -n "$o" ] && printf '%s\n' "$o"
  fi
else echo vcgencmd=absent; fi""",
    ),
    (
        "k3s",
        r"""if [ -e /usr/local/bin/k3s ]; then echo installed=yes
  [ -x /usr/local/bin/k3s ] && $T /usr/local/bin/k3s --version 2>/dev/null
else echo installed=no; fi""",
    ),
    (
        "sudo",
        r"""if has sudo; then
  if $T sudo -n true </dev/null >/dev/null 2>&1; then echo sudo=yes; else echo sudo=no; fi
else echo sudo=absent; fi""",
    ),
    (
        # The real uid from /proc/self/status (the shell's own: no fork); `id` only as a fallback.
        "user",
        r"""u=; [ -r /proc/self/status ] && while read -r k v r; do
  if [ "$k" = Uid: ]; then u=$v; break; fi
done < /proc/self/status
[ -n "$u" ] || u=$(id -u 2>/dev/null)
n=${USER:-$LOGNAME}; [ -n "$n" ] || n=$(id -un 2>/dev/null)
printf 'uid=%s\nuser=%s\n' "$u" "$n"
""",
    ),
)

NAMES: tuple[str, ...] = tuple(name for name, _ in SECTIONS)


def marker(name: str) -> str:
    """The line that introduces section `name` in the script's output."""
    return f"{MARKER_PREFIX}{name}{MARKER_SUFFIX}"


def gather_script() -> str:
    """The POSIX sh script that prints every fact, each section after its marker, then the end marker."""
    parts = [PREAMBLE]
    for name, snippet in SECTIONS:
        parts.append(f"m {name}")
        parts.append(snippet)
    parts.append(f"m {END}")
    parts.append("exit 0")
    return "\n".join(parts) + "\n"


def gather_command() -> str:
    """`gather_script()` as one command line for an SSH exec channel, whatever the login shell."""
    return "sh -c " + shlex.quote(gather_script())
