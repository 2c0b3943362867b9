"""Preflight: check every node against what k3s and the platform need, before anything changes.

A pure function of the cluster model and what `reach` learned, so each rule is unit-testable.
Problems that the `prepare` stage fixes by itself are warnings saying what it will do; problems the
user must fix are failures saying how. Hosts in `ray_external` (outside Kubernetes) never fail preflight:
nothing in the cluster's stages runs on them, so what is wrong with them (asleep, unreachable, too small)
is a warning on their own rows and `piml up` goes on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from piml.inventory import Role

if TYPE_CHECKING:
    from piml.config import PimlConfig
    from piml.reach import NodeReport

PASS, WARN, FAIL = "pass", "warn", "fail"
MIN_MEMORY_MB = 1800  # a "2 GB" board reports about 1850 MiB
MIN_FREE_DISK_GB = 8
MAX_CLOCK_SKEW_S = 30  # TLS and etcd both dislike skewed clocks


@dataclass(frozen=True)
class Check:
    node: str  # a node name, or "cluster"
    name: str
    status: str  # pass | warn | fail
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        return {"node": self.node, "check": self.name, "status": self.status, "detail": self.detail, "fix": self.fix}


def preflight(reports: list[NodeReport], config: PimlConfig, ha: bool) -> list[Check]:
    """All checks, per node, then cluster-wide ones. `ha`: several servers, so embedded etcd."""
    checks: list[Check] = []
    for report in reports:
        checks += _node_checks(report, config, ha)
    checks += _cluster_checks([r for r in reports if r.reachable])
    return checks


def _node_checks(report: NodeReport, config: PimlConfig, ha: bool) -> list[Check]:
    checks = _rules(report, config, ha)
    if report.node.role is Role.EXTERNAL:
        return [
            replace(c, status=WARN, detail=f"{c.detail} (ray_external: piml up goes on without it)")
            if c.status == FAIL
            else c
            for c in checks
        ]
    return checks


def _rules(report: NodeReport, config: PimlConfig, ha: bool) -> list[Check]:
    node, facts = report.node, report.facts
    name = node.name
    if report.failure is not None:
        return [Check(name, "reach", FAIL, report.failure.reason.removeprefix(f"{name}: "), report.failure.fix)]
    checks = [Check(name, "reach", PASS, f"{node.user or 'ssh'}@{node.address}")]

    if facts.can_become_root is False:
        checks.append(
            Check(
                name,
                "sudo",
                FAIL,
                f"sudo asks {facts.user or 'the user'} for a password",
                f"on the node: echo '{facts.user} ALL=(ALL) NOPASSWD:ALL' | sudo tee /etc/sudoers.d/010_piml",
            )
        )
    elif facts.can_become_root:
        checks.append(Check(name, "sudo", PASS, "root" if facts.is_root else "passwordless sudo"))

    if not facts.complete:
        checks.append(
            Check(
                name, "facts", WARN, "the facts output was cut short", "rerun; if it persists, check the node's shell"
            )
        )

    declared = node.arch
    if facts.arch not in ("arm64", "amd64"):
        checks.append(
            Check(
                name,
                "architecture",
                FAIL,
                f"{facts.machine or 'unknown'} is not supported",
                "use a 64-bit OS (arm64 or amd64)",
            )
        )
    elif declared and declared != facts.arch:
        checks.append(
            Check(
                name,
                "architecture",
                FAIL,
                f"the inventory says {declared}, the node is {facts.arch}",
                "fix piml_arch / piml_model in the inventory",
            )
        )

    memory = facts.memory_total_mb
    if memory is not None:
        if memory < MIN_MEMORY_MB:
            checks.append(Check(name, "memory", FAIL, f"{memory} MiB RAM, under 2 GB", "use a board with 4 GB or more"))
        else:
            checks.append(Check(name, "memory", PASS, f"{memory / 1024:.1f} GiB"))

    free = facts.root_free_bytes
    if free is not None:
        gb = free / 1e9
        status = FAIL if gb < MIN_FREE_DISK_GB else PASS
        checks.append(
            Check(
                name,
                "disk",
                status,
                f"{gb:.1f} GB free on /",
                "free space or use a larger card/disk" if status == FAIL else "",
            )
        )

    if node.role is Role.SERVER:
        storage = node.storage or facts.boot_device
        if storage in ("sd", "emmc"):
            if ha:
                checks.append(
                    Check(
                        name,
                        "etcd storage",
                        FAIL,
                        f"etcd server on {storage}: it cannot carry etcd's writes",
                        "boot the servers from NVMe or SSD, or run a single server",
                    )
                )
            else:
                checks.append(
                    Check(
                        name,
                        "server storage",
                        WARN,
                        f"k3s server on {storage}: slow and wears the card",
                        "NVMe or SSD is recommended for servers",
                    )
                )

    if node.role is not Role.EXTERNAL:
        if facts.memory_cgroup is False:
            checks.append(
                Check(
                    name,
                    "memory cgroup",
                    WARN,
                    "off: k3s would fail with 'failed to find memory cgroup'",
                    f"prepare adds cgroup_enable=memory cgroup_memory=1 to {facts.boot_cmdline_path or 'cmdline.txt'} and reboots",
                )
            )
        elif facts.memory_cgroup:
            checks.append(Check(name, "memory cgroup", PASS, f"on (cgroup v{facts.cgroup_version})"))
        if facts.swap_total_mb:
            checks.append(Check(name, "swap", WARN, f"{facts.swap_total_mb} MiB swap on", "prepare turns swap off"))

    if node.role is not Role.EXTERNAL and facts.model == "pi5" and facts.page_size == 16384:
        checks.append(_page_size(name, facts, config))

    if report.clock_skew_s is not None and abs(report.clock_skew_s) > MAX_CLOCK_SKEW_S:
        checks.append(
            Check(
                name,
                "clock",
                FAIL,
                f"{report.clock_skew_s:+.0f} s off this machine's clock",
                "enable NTP on the node (timedatectl set-ntp true) and check its network",
            )
        )
    elif facts.time_synced is False:
        checks.append(Check(name, "clock", WARN, "not NTP-synchronised", "enable NTP: sudo timedatectl set-ntp true"))
    else:
        checks.append(Check(name, "clock", PASS, "synchronised" if facts.time_synced else "within 30 s of ours"))

    if facts.throttled and facts.throttled.now:
        checks.append(
            Check(
                name,
                "power",
                WARN,
                "throttled now: " + ", ".join(facts.throttled.now),
                "use the official power supply and a cooler",
            )
        )
    return checks


def _page_size(name: str, facts, config: PimlConfig) -> Check:
    """A Pi 5 on 16 KB pages. The platform's images all run on them (the official redis image builds jemalloc
    for up to 64 KB pages, so do Ray's arm64 wheels: docs/facts.md), so only an explicit
    `nodes.pi5_4k_pages: true` switches it, and only where kernel8.img is on the boot partition."""
    if config.nodes.pi5_4k_pages is not True:
        return Check(name, "page size", PASS, "16 KB pages (kernel_2712.img): the platform's images run on them")
    if facts.boot_kernel8 is False:
        where = facts.boot_cmdline_path.rsplit("/", 1)[0] if facts.boot_cmdline_path else "the boot partition"
        return Check(
            name,
            "page size",
            WARN,
            f"16 KB pages, and no kernel8.img in {where} to switch to (nodes.pi5_4k_pages: true)",
            "prepare leaves the kernel as it is; install the 4 KB kernel (Raspberry Pi OS has it) or set nodes.pi5_4k_pages: auto",
        )
    return Check(
        name,
        "page size",
        WARN,
        "16 KB pages (kernel_2712.img); nodes.pi5_4k_pages: true asks for 4 KB",
        "prepare sets kernel=kernel8.img in config.txt and reboots"
        + ("" if facts.boot_kernel8 else " (if kernel8.img is there)"),
    )


def _cluster_checks(reached: list[NodeReport]) -> list[Check]:
    checks = []
    hostnames = Counter(r.facts.hostname for r in reached if r.facts.hostname)
    duplicates = sorted(h for h, count in hostnames.items() if count > 1)
    if duplicates:
        for hostname in duplicates:
            names = [r.node.name for r in reached if r.facts.hostname == hostname]
            checks.append(
                Check(
                    "cluster",
                    "hostnames",
                    WARN,
                    f"{', '.join(names)} are all called '{hostname}'",
                    "prepare renames each node after its inventory name",
                )
            )
    elif reached:
        checks.append(Check("cluster", "hostnames", PASS, "unique"))
    arches = Counter(r.facts.arch for r in reached if r.facts.arch in ("arm64", "amd64"))
    if len(arches) > 1:
        mix = ", ".join(f"{count} {arch}" for arch, count in sorted(arches.items()))
        checks.append(Check("cluster", "architectures", PASS, f"mixed ({mix}): piml picks images per architecture"))
    return checks
