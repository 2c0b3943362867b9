"""Each preflight rule on facts as a real Pi would report them (no SSH needed)."""

import pytest

from piml.config import PimlConfig
from piml.facts.model import NodeFacts
from piml.facts.values import Throttled
from piml.inventory import Node, Role
from piml.preflight import preflight
from piml.reach import NodeReport
from piml.ssh.results import Failure

GOOD = dict(hostname="pi1", model="pi5", arch="arm64", machine="aarch64", memory_total_mb=8000, root_free_bytes=50 * 10**9,
            memory_cgroup=True, cgroup_version=2, swap_total_mb=0, time_synced=True, page_size=4096, complete=True,
            uid=1000, user="pi", sudo_nopasswd=True, boot_device="nvme", throttled=Throttled.decode(0))


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
        ({"memory_cgroup": False, "boot_cmdline_path": "/boot/firmware/cmdline.txt"}, "memory cgroup", "warn", "failed to find memory cgroup"),
        ({"swap_total_mb": 512}, "swap", "warn", "512 MiB"),
        ({"page_size": 16384}, "page size", "warn", "16 KB pages"),
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


def test_page_size_fails_only_when_4k_pages_are_refused_and_redis_is_needed():
    refuse = PimlConfig.model_validate({"nodes": {"pi5_4k_pages": False}})
    assert result(preflight([report(page_size=16384)], refuse, ha=False), "page size").status == "fail"
    no_redis = PimlConfig.model_validate({"nodes": {"pi5_4k_pages": False}, "queue": {"kind": "rabbitmq"}})
    assert result(preflight([report(page_size=16384)], no_redis, ha=False), "page size") is None


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
    reports = [report(name="a", hostname="raspberrypi"), report(name="b", hostname="raspberrypi"),
               report(name="c", arch="amd64", machine="x86_64")]
    checks = preflight(reports, PimlConfig(), ha=False)
    hostnames = result(checks, "hostnames", "cluster")
    assert hostnames.status == "warn" and "a, b are all called 'raspberrypi'" in hostnames.detail
    assert "1 amd64, 2 arm64" in result(checks, "architectures", "cluster").detail


def test_unreachable_node_has_only_its_reach_row():
    node = Node(name="gone", address="10.0.0.9", role=Role.AGENT)
    checks = preflight([report(), NodeReport(node, failure=Failure("unreachable", "gone: no answer", "check power"))], PimlConfig(), ha=False)
    rows = [c for c in checks if c.node == "gone"]
    assert [(c.name, c.status, c.detail) for c in rows] == [("reach", "fail", "no answer")]
