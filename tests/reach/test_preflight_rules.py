"""Each preflight rule on facts as a real Pi would report them (no SSH needed)."""

import pytest

from piml.config import PimlConfig
from piml.facts.model import NodeFacts
from piml.facts.values import Throttled
from piml.inventory import Node, Role
from piml.preflight import preflight
from piml.reach import NodeReport
from piml.ssh.results import Failure

GOOD = dict(
    hostname="pi1",
    model="pi5",
    arch="arm64",
    machine="aarch64",
    memory_total_mb=8000,
    root_free_bytes=50 * 10**9,
    memory_cgroup=True,
    cgroup_version=2,
    swap_total_mb=0,
    time_synced=True,
    page_size=4096,
    complete=True,
    uid=1000,
    user="pi",
    sudo_nopasswd=True,
    boot_device="nvme",
    throttled=Throttled.decode(0),
)


def report(role=Role.SERVER, name="pi1", skew=0.0, storage=None, declared_arch=None, **facts):
    node = Node(name=name, address="10.0.0.1", role=role, user="pi", arch=declared_arch, storage=storage)
    values = {**GOOD, "hostname": name, **facts}
    return NodeReport(node, facts=NodeFacts(**values), clock_skew_s=skew)


def result(checks, name, node="pi1"):
    found = [c for c in checks if c.node == node and c.name == name]
    return found[0] if found else None


def test_a_good_pi_passes_everything():
    checks = preflight([report()], PimlConfig(), ha=False)
    assert {c.status for c in checks} == {"pass"}


@pytest.mark.parametrize(
    "facts, check, status, words",
    [
        ({"memory_total_mb": 900}, "memory", "fail", "under 2 GB"),
        ({"root_free_bytes": 5 * 10**9}, "disk", "fail", "5.0 GB free"),
        (
            {"memory_cgroup": False, "boot_cmdline_path": "/boot/firmware/cmdline.txt"},
            "memory cgroup",
            "warn",
            "failed to find memory cgroup",
        ),
        ({"swap_total_mb": 512}, "swap", "warn", "512 MiB"),
        ({"page_size": 16384}, "page size", "pass", "16 KB pages"),
        ({"time_synced": False}, "clock", "warn", "not NTP-synchronised"),
        ({"sudo_nopasswd": False}, "sudo", "fail", "password"),
        ({"arch": "armv7l", "machine": "armv7l"}, "architecture", "fail", "not supported"),
        ({"throttled": Throttled.decode(0x50005)}, "power", "warn", "under_voltage"),
    ],
)
def test_rules(facts, check, status, words):
    found = result(preflight([report(**facts)], PimlConfig(), ha=False), check)
    assert found is not None and found.status == status and words in found.detail, found


def test_clock_skew_fails():
    found = result(preflight([report(skew=-95)], PimlConfig(), ha=False), "clock")
    assert found.status == "fail" and "-95 s" in found.detail


def test_16k_pages_are_fine_for_redis_and_only_an_explicit_true_switches():
    # The official redis image (and Ray's arm64 wheels) build jemalloc for up to 64 KB pages: a Pi 5 on 16 KB
    # pages is neither a warning nor a failure, whatever runs Redis (docs/facts.md)
    for settings in (
        {},
        {"nodes": {"pi5_4k_pages": "auto"}},
        {"nodes": {"pi5_4k_pages": False}},
        {"queue": {"kind": "redis"}, "ray": {"gcs_fault_tolerance": True}},
    ):
        found = result(
            preflight([report(page_size=16384, boot_kernel8=True)], PimlConfig.model_validate(settings), ha=False),
            "page size",
        )
        assert found.status == "pass", (settings, found)
    explicit = PimlConfig.model_validate({"nodes": {"pi5_4k_pages": True}})
    found = result(preflight([report(page_size=16384, boot_kernel8=True)], explicit, ha=False), "page size")
    assert found.status == "warn" and "kernel=kernel8.img" in found.fix and "reboots" in found.fix
    # no kernel8.img on the boot partition (Ubuntu boots vmlinuz): nothing to switch to, prepare leaves it
    found = result(
        preflight(
            [report(page_size=16384, boot_kernel8=False, boot_cmdline_path="/boot/firmware/cmdline.txt")],
            explicit,
            ha=False,
        ),
        "page size",
    )
    assert (
        found.status == "warn"
        and "no kernel8.img in /boot/firmware" in found.detail
        and "leaves the kernel" in found.fix
    )
    assert result(preflight([report(page_size=4096)], explicit, ha=False), "page size") is None  # 4 KB already
    assert result(preflight([report(page_size=16384, model="cm4")], explicit, ha=False), "page size") is None


def test_etcd_on_sd_fails_in_ha_and_warns_on_a_single_server():
    assert result(preflight([report(boot_device="sd")], PimlConfig(), ha=True), "etcd storage").status == "fail"
    assert result(preflight([report(boot_device="sd")], PimlConfig(), ha=False), "server storage").status == "warn"
    # The inventory's piml_storage wins over what the node's root device looks like.
    assert result(preflight([report(boot_device="sd", storage="nvme")], PimlConfig(), ha=True), "etcd storage") is None
    assert result(preflight([report(role=Role.AGENT, boot_device="sd")], PimlConfig(), ha=True), "etcd storage") is None


def test_declared_arch_must_match():
    found = result(preflight([report(declared_arch="amd64")], PimlConfig(), ha=False), "architecture")
    assert found.status == "fail" and "inventory says amd64" in found.detail


def test_cluster_rules():
    reports = [
        report(name="a", hostname="raspberrypi"),
        report(name="b", hostname="raspberrypi"),
        report(name="c", arch="amd64", machine="x86_64"),
    ]
    checks = preflight(reports, PimlConfig(), ha=False)
    hostnames = result(checks, "hostnames", "cluster")
    assert hostnames.status == "warn" and "a, b are all called 'raspberrypi'" in hostnames.detail
    assert "1 amd64, 2 arm64" in result(checks, "architectures", "cluster").detail


def test_unreachable_node_has_only_its_reach_row():
    node = Node(name="gone", address="10.0.0.9", role=Role.AGENT)
    checks = preflight(
        [report(), NodeReport(node, failure=Failure("unreachable", "gone: no answer", "check power"))],
        PimlConfig(),
        ha=False,
    )
    rows = [c for c in checks if c.node == "gone"]
    assert [(c.name, c.status, c.detail) for c in rows] == [("reach", "fail", "no answer")]


# --- ray_external hosts (outside Kubernetes) never stop the cluster ----------------------------------------------


def test_unreachable_ray_external_host_is_a_warning_on_its_row_only():
    mac = Node(name="macmini", address="10.0.0.50", role=Role.EXTERNAL, arch="arm64")
    asleep = NodeReport(
        mac, failure=Failure("unreachable", "macmini: no answer from 10.0.0.50:22 within the timeout", "check power")
    )
    checks = preflight([report(), asleep], PimlConfig(), ha=False)
    rows = [c for c in checks if c.node == "macmini"]
    assert [(c.name, c.status) for c in rows] == [("reach", "warn")]
    assert (
        "no answer" in rows[0].detail
        and "piml up goes on without it" in rows[0].detail
        and rows[0].fix == "check power"
    )
    assert "fail" not in {c.status for c in checks}  # so `piml up` goes on to prepare and k3s
    assert {c.status for c in checks if c.node == "pi1"} == {"pass"}


def test_a_reached_ray_external_host_warns_where_a_k3s_node_would_fail():
    small = report(
        role=Role.EXTERNAL,
        name="macmini",
        memory_total_mb=900,
        root_free_bytes=10**9,
        sudo_nopasswd=False,
        page_size=16384,
        memory_cgroup=False,
        swap_total_mb=512,
    )
    checks = preflight([report(), small], PimlConfig(), ha=False)
    mine = {c.name: c for c in checks if c.node == "macmini"}
    assert {mine[n].status for n in ("memory", "disk", "sudo")} == {"warn"}
    assert all("ray_external" in mine[n].detail for n in ("memory", "disk", "sudo"))
    assert {"memory cgroup", "swap", "page size"}.isdisjoint(mine)  # k3s / prepare matters only: not run there
    assert "fail" not in {c.status for c in checks}
    # a k3s node in the same state still fails: the rule is about ray_external only
    agent = report(role=Role.AGENT, name="pi2", memory_total_mb=900)
    assert result(preflight([report(), agent], PimlConfig(), ha=False), "memory", "pi2").status == "fail"
    gone = NodeReport(
        Node(name="pi3", address="10.0.0.3", role=Role.AGENT),
        failure=Failure("unreachable", "pi3: no answer", "check power"),
    )
    assert result(preflight([report(), gone], PimlConfig(), ha=False), "reach", "pi3").status == "fail"
