"""piml up (prepare, k3s, kubeconfig) and piml teardown --k3s against real test nodes, with the k3s
stand-in (tests/standins/k3s-airgap) as the air-gap install source. One scenario inventory per case."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import ssl
import stat
import subprocess
import sys
import tarfile
import tempfile
import time

import pytest
import yaml

from tests.k3s.helpers import changed_counts, cluster_nodes, is_ready, make_scenario

pytestmark = pytest.mark.nodes

OTHER_KUBECONFIG = """\
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: T1RIRVI=
    server: https://10.9.9.9:6443
  name: work
# kept: a comment between entries
- cluster:
    server: https://staging.example:6443   # and a trailing one
  name: staging
contexts:
- context:
    cluster: work
    user: alice
  name: work
- context: {cluster: staging, user: alice}
  name: staging
current-context: work
kind: Config
preferences: {}
users:
- name: alice
  user:
    token: not-a-real-token
"""


@pytest.fixture
def fresh_nodes(node_factory):
    """node_factory(count, names=...) whose nodes are destroyed after the test: each systemd in a node holds
    inotify instances, and the host's per-user limit (fs.inotify.max_user_instances) is soon reached."""
    made = []

    def make(count, names):
        nodes = node_factory(count, names=names)
        made.extend(nodes)
        return nodes

    yield make
    node_factory.destroy(made)


def boot_id(sub, node) -> str:
    return sub.run(node, "cat /proc/sys/kernel/random/boot_id").stdout.strip()


def service_pid(sub, node, unit: str) -> str:
    return sub.run(node, f"systemctl show -p MainPID --value {unit}").stdout.strip()


def api_get(kubeconfig: dict, path: str, context: str):
    """GET `path` from the cluster as kubectl would: the context's server, CA and client cert, with the
    server's certificate checked against the address we dial (its SANs must hold it)."""
    ctx_entry = next(c for c in kubeconfig["contexts"] if c["name"] == context)["context"]
    cluster = next(c for c in kubeconfig["clusters"] if c["name"] == ctx_entry["cluster"])["cluster"]
    user = next(u for u in kubeconfig["users"] if u["name"] == ctx_entry["user"])["user"]
    host, port = cluster["server"].removeprefix("https://").rsplit(":", 1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for key in ("client-certificate-data", "client-key-data"):
            paths[key] = os.path.join(tmp, key)
            with open(paths[key], "wb") as handle:
                handle.write(base64.b64decode(user[key]))
        context_ssl = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        context_ssl.load_cert_chain(paths["client-certificate-data"], paths["client-key-data"])
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            with context_ssl.wrap_socket(raw, server_hostname=host) as tls:
                tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(body)


def entry_text(text: str, section: str, name: str) -> str:
    """The raw text of one list entry, for byte-for-byte comparisons."""
    node = yaml.compose(text)
    for key, value in node.value:
        if key.value == section:
            lines = text.splitlines(keepends=True)
            starts = [item.start_mark.line for item in value.value]
            end = value.end_mark.line
            for item, a, b in zip(value.value, starts, starts[1:] + [end], strict=True):
                if any(k.value == "name" and v.value == name for k, v in item.value):
                    return "".join(lines[a:b])
    raise AssertionError(f"{section}/{name} not found")


def fast_path_off(sc) -> dict[str, dict[str, dict[str, int]]]:
    """Run each playbook stage's printed command with the fast path off; {stage: {host: PLAY RECAP counts}}."""
    out = sc.piml("up", "--only", "prepare,k3s", "--print-command", "--json")
    assert out.returncode == 0, out.stderr
    recaps = {}
    for stage, command in json.loads(out.stdout)["commands"].items():
        env = {**os.environ, **command["env"], "KUBECONFIG": str(sc.kubeconfig)}
        run = subprocess.run(
            [*command["argv"], "-e", "piml_fast_path=false"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            cwd=sc.root,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
        recap = run.stdout.rpartition("PLAY RECAP")[2]
        recaps[stage] = {
            line.split()[0]: {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
            for line in recap.splitlines()
            if ":" in line and "ok=" in line
        }
    return recaps


def test_single_server_two_agents_rerun_kubeconfig_teardown(node_factory, fresh_nodes, piml, tmp_path):
    sub = node_factory.substrate
    nodes = fresh_nodes(3, names=["k1srv", "k1ag1", "k1ag2"])
    server, agent1, agent2 = nodes
    sc = make_scenario(
        piml,
        tmp_path,
        nodes,
        host_vars={"k1ag2": {"piml_labels": {"disk": "nvme"}, "piml_taints": ["dedicated=ml:NoSchedule"]}},
    )
    sc.kubeconfig.parent.mkdir(parents=True)
    sc.kubeconfig.write_text(OTHER_KUBECONFIG)
    before_boot = {n.name: boot_id(sub, n) for n in nodes}
    for n in nodes:  # a fresh Pi OS image: no cgroup flags in cmdline.txt
        assert "cgroup_enable=memory" not in sub.run(n, "cat /boot/firmware/cmdline.txt").stdout

    # --dry-run: says what would happen per node, touches nothing (no SSH, no token, no kubeconfig)
    out = sc.piml("up", "--dry-run")
    assert out.returncode == 0, out.stderr
    for stage in ("preflight", "prepare", "k3s", "kubeconfig"):
        assert stage in out.stdout
    assert "k1srv: k3s v1.36.3+k3s1 as first server" in out.stdout and "taint dedicated=ml:NoSchedule" in out.stdout
    assert not (sc.root / ".piml/k3s-token").exists() and not (sc.root / ".piml/known_hosts").exists()
    assert sc.kubeconfig.read_text() == OTHER_KUBECONFIG

    # first run
    out, data = sc.up("--accept-new-host-keys")
    assert out.returncode == 0, sc.failure(out, data)
    assert data["ok"] and all(v > 0 for v in changed_counts(data, "prepare").values())
    for n in nodes:
        cmdline = sub.run(n, "cat /boot/firmware/cmdline.txt").stdout
        assert cmdline.count("\n") == 1 and cmdline.endswith("\n"), "cmdline.txt must stay one line"
        assert cmdline.split().count("cgroup_enable=memory") == 1 and cmdline.split().count("cgroup_memory=1") == 1
        assert boot_id(sub, n) != before_boot[n.name], f"{n.name} should have rebooted for the cmdline change"
        assert sub.run(n, "hostname").stdout.strip() == n.name
        assert f"127.0.1.1\t{n.name}" in sub.run(n, "cat /etc/hosts").stdout
        assert (
            "kernel=kernel8.img" not in sub.run(n, "cat /boot/firmware/config.txt").stdout
        )  # Pi 5 + Redis: 16 KB is fine
    listed = cluster_nodes(sub, server)
    assert set(listed) == {"k1srv", "k1ag1", "k1ag2"} and all(is_ready(n) for n in listed.values())
    assert listed["k1srv"]["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] == "true"
    for n in listed.values():
        assert n["metadata"]["labels"]["piml.io/model"] == "pi5" and n["metadata"]["labels"]["kubernetes.io/arch"]
    assert listed["k1ag2"]["metadata"]["labels"]["disk"] == "nvme"
    assert listed["k1ag2"]["spec"]["taints"] == [{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]
    assert "etcd" not in json.dumps(listed["k1srv"]["metadata"]["labels"])  # one server: no --cluster-init

    # the token: generated once, 0600, never printed; on the nodes only in the 0600 config file
    token_file = sc.root / ".piml/k3s-token"
    token = token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token) == 64
    assert token not in out.stdout + out.stderr
    assert sub.run(server, "stat -c %a /etc/rancher/k3s/config.yaml").stdout.strip() == "600"
    assert token in sub.run(agent1, "cat /etc/rancher/k3s/config.yaml").stdout

    # kubeconfig: stored 0600, pointed at the server, merged next to the other contexts, which are untouched
    stored = sc.root / ".piml/kubeconfig"
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    ours = yaml.safe_load(stored.read_text())
    assert ours["clusters"][0]["cluster"]["server"] == f"https://{server.address}:6443"
    merged_text = sc.kubeconfig.read_text()
    merged = yaml.safe_load(merged_text)
    original = yaml.safe_load(OTHER_KUBECONFIG)
    for section in ("clusters", "contexts", "users"):
        assert [e for e in merged[section] if e["name"] != "rack"] == original[section]
        for entry in original[section]:
            assert entry_text(merged_text, section, entry["name"]) == entry_text(
                OTHER_KUBECONFIG, section, entry["name"]
            )
    assert merged["current-context"] == "work"  # the user's choice is kept
    assert (sc.kubeconfig.parent / "config.piml.bak").read_text() == OTHER_KUBECONFIG
    # the API answers with a certificate valid for the server's address (--tls-san), and lists the nodes
    api_nodes = api_get(merged, "/api/v1/nodes", "rack")
    assert {n["metadata"]["name"] for n in api_nodes["items"]} == {"k1srv", "k1ag1", "k1ag2"}

    # second run: nothing changes, nothing restarts
    pids = {n.name: service_pid(sub, n, "k3s" if n is server else "k3s-agent") for n in nodes}
    started = time.monotonic()
    out, data = sc.up()
    assert out.returncode == 0, sc.failure(out, data)
    assert changed_counts(data, "prepare") == {n.name: 0 for n in nodes}
    assert changed_counts(data, "k3s") == {n.name: 0 for n in nodes}
    assert data["stages"]["kubeconfig"]["hosts"]["k1srv"]["changed"] == 0
    assert {n.name: service_pid(sub, n, "k3s" if n is server else "k3s-agent") for n in nodes} == pids
    assert sc.kubeconfig.read_text() == merged_text
    print(f"second run {time.monotonic() - started:.1f} s")
    # ... and cheaply: every node is left after its probe (a handful of tasks, not the whole playbooks)
    for stage in ("prepare", "k3s"):
        assert all(h["ok"] <= 6 for h in data["stages"][stage]["hosts"].values()), (stage, data["stages"][stage])
    # The fast path trusts the probe: with it off, every task of the plays runs on the converged nodes and
    # changes nothing either (run by hand, as `piml up --print-command` prints it, with piml_fast_path=false)
    for stage, recap in fast_path_off(sc).items():
        assert recap, stage
        assert all(counts["changed"] == 0 and counts["failed"] == 0 for counts in recap.values()), (stage, recap)
        assert all(counts["ok"] > 6 for counts in recap.values()), (stage, recap)  # the whole plays ran

    # a changed setting is applied on re-run, on that node only: a new label (k3s restarts there) and a
    # tampered sysctl file (prepare rewrites it); the rest is left alone
    sc.write_inventory(_with_host_var(sc.inventory(), "k1ag1", "piml_labels", {"zone": "b"}))
    sub.run(agent2, "chmod 0600 /etc/sysctl.d/90-piml-k3s.conf && echo '# edited' >> /etc/sysctl.d/90-piml-k3s.conf")
    out, data = sc.up()
    assert out.returncode == 0, sc.failure(out, data)
    assert changed_counts(data, "prepare") == {"k1srv": 0, "k1ag1": 0, "k1ag2": 1}
    k3s_changed = changed_counts(data, "k3s")
    assert k3s_changed["k1ag1"] > 0 and k3s_changed["k1srv"] == 0 and k3s_changed["k1ag2"] == 0
    assert sub.run(agent2, "stat -c %a /etc/sysctl.d/90-piml-k3s.conf").stdout.strip() == "644"
    assert "edited" not in sub.run(agent2, "cat /etc/sysctl.d/90-piml-k3s.conf").stdout
    now = {n.name: service_pid(sub, n, "k3s" if n is server else "k3s-agent") for n in nodes}
    assert now["k1ag1"] != pids["k1ag1"] and now["k1srv"] == pids["k1srv"] and now["k1ag2"] == pids["k1ag2"]
    listed = cluster_nodes(sub, server)
    assert listed["k1ag1"]["metadata"]["labels"]["zone"] == "b" and is_ready(listed["k1ag1"])
    # a stopped k3s is started again
    sub.run(agent2, "systemctl stop k3s-agent")
    out, data = sc.up("--only", "k3s")
    assert out.returncode == 0, sc.failure(out, data)
    assert changed_counts(data, "k3s") == {"k1srv": 0, "k1ag1": 0, "k1ag2": 1}
    assert sub.run(agent2, "systemctl is-active k3s-agent", check=False).stdout.strip() == "active"

    # --no-merge: the stored kubeconfig only
    sc.kubeconfig.write_text(OTHER_KUBECONFIG)
    out, data = sc.up("--only", "kubeconfig", "--no-merge")
    assert out.returncode == 0 and sc.kubeconfig.read_text() == OTHER_KUBECONFIG
    out, data = sc.up("--only", "kubeconfig")
    assert out.returncode == 0 and sc.kubeconfig.read_text() == merged_text

    # teardown: confirmation required, then agents drained/deleted, everything uninstalled, context removed
    out = sc.piml("teardown", "--k3s")
    assert out.returncode == 2 and "--yes" in out.stderr
    out = sc.piml("teardown")  # the platform (not k3s): it too asks first, and there is no terminal
    assert out.returncode == 2 and "--yes" in out.stderr
    out = sc.piml("teardown", "--k3s", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    for n in nodes:
        assert sub.run(n, "test -e /usr/local/bin/k3s || test -e /etc/rancher/k3s", check=False).returncode == 1
        assert sub.run(n, "systemctl is-active k3s k3s-agent", check=False).stdout.split() == ["inactive", "inactive"]
    assert sc.kubeconfig.read_text() == OTHER_KUBECONFIG  # our context gone, the rest exactly as it was
    assert not stored.exists()


def test_ha_given_token_a_node_added_later_and_the_first_server_retired(node_factory, fresh_nodes, piml, tmp_path):
    sub = node_factory.substrate
    nodes = fresh_nodes(5, names=["k2s1", "k2s2", "k2s3", "k2ag1", "k2ag2"])
    first, *_ = nodes
    given = "piml-test-given-token-0123456789"
    sc = make_scenario(
        piml,
        tmp_path,
        nodes[:4],
        servers=3,
        name="harack",
        token=given,
        config={"nodes": {"pi5_4k_pages": False}, "mlflow": {"enabled": False}, "queue": {"enabled": False}},
    )
    out, data = sc.up("--accept-new-host-keys")
    assert out.returncode == 0, sc.failure(out, data)
    assert not (sc.root / ".piml/k3s-token").exists()  # the inventory's token is used, not a generated one
    configs = {n.name: json.loads(sub.run(n, "grep -v '^#' /etc/rancher/k3s/config.yaml").stdout) for n in nodes[:4]}
    assert configs["k2s1"]["cluster-init"] is True and "server" not in configs["k2s1"]
    for name in ("k2s2", "k2s3", "k2ag1"):
        assert configs[name]["server"] == f"https://{first.address}:6443" and "cluster-init" not in configs[name]
    assert all(c["token"] == given for c in configs.values())
    assert set(configs["k2s2"]["tls-san"]) >= {n.address for n in nodes[:3]}
    assert "kernel=kernel8.img" not in sub.run(first, "cat /boot/firmware/config.txt").stdout  # pi5_4k_pages: false
    listed = cluster_nodes(sub, first)
    assert set(listed) == {"k2s1", "k2s2", "k2s3", "k2ag1"} and all(is_ready(n) for n in listed.values())
    for name in ("k2s1", "k2s2", "k2s3"):
        assert listed[name]["metadata"]["labels"]["node-role.kubernetes.io/etcd"] == "true"
    # every server's certificate carries every server address
    ours = yaml.safe_load((sc.root / ".piml/kubeconfig").read_text())
    for server in nodes[:3]:
        ours["clusters"][0]["cluster"]["server"] = f"https://{server.address}:6443"
        assert api_get(ours, "/version", "harack")["gitVersion"] == "v1.36.3+k3s1"

    # a node added to the inventory later joins; the others are not touched
    sc.add_node(nodes[4])
    out, data = sc.up("--accept-new-host-keys")
    assert out.returncode == 0, sc.failure(out, data)
    for stage in ("prepare", "k3s"):
        counts = changed_counts(data, stage)
        assert counts.pop("k2ag2") > 0
        assert counts == {n.name: 0 for n in nodes[:4]}, stage
    listed = cluster_nodes(sub, first)
    assert "k2ag2" in listed and is_ready(listed["k2ag2"])

    # a backup of HA servers holds an etcd snapshot (k3s etcd-snapshot save) and the token; the snapshot is not
    # left behind on the server (k3s never prunes on-demand ones)
    out = sc.piml("backup", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert (
        report["manifest"]["parts"]["k3s"]["datastore"] == "etcd"
        and "k3s datastore" not in report["manifest"]["left_out"]
    )
    with tarfile.open(report["archive"]) as archive, tempfile.TemporaryDirectory() as tmp:
        archive.extract("k3s.tar", tmp, filter="data")
        with tarfile.open(os.path.join(tmp, "k3s.tar")) as k3s_part:
            names = k3s_part.getnames()
    assert "token" in names and any(n.startswith("db/snapshots/piml-backup-") and "-k2s1-" in n for n in names), names
    assert sub.run(first, "ls /var/lib/rancher/k3s/server/db/snapshots").stdout.strip() == ""

    # the first server retires: piml reaches the cluster through the next one; the others carry on without it
    # (servers from their own etcd data, agents from their cached server list, a restart included), and piml up
    # then points their config at the new first server
    second = nodes[1]
    out = sc.piml("node", "remove", "k2s1", "--yes")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "k2s2: now the first server" in out.stdout, out.stdout
    removed_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    assert sub.run(first, "test -e /usr/local/bin/k3s && echo left || echo gone").stdout.strip() == "gone"
    assert "k2s1" not in (sc.root / "inventory/hosts.yml").read_text()
    ours = yaml.safe_load((sc.root / ".piml/kubeconfig").read_text())
    assert ours["clusters"][0]["cluster"]["server"] == f"https://{second.address}:6443"
    members = json.loads(sub.run(second, "cat /var/lib/rancher/k3s/server/standin-members.json").stdout)
    assert set(members) == {"k2s2", "k2s3"}  # its etcd member went with the Node (k3s's member controller)
    sub.run(nodes[2], "systemctl restart k3s")
    sub.run(nodes[3], "systemctl restart k3s-agent")
    rest = {"k2s2", "k2s3", "k2ag1", "k2ag2"}

    def all_beating_since(since: str) -> bool:  # each node's heartbeat came after `since`: it lives without k2s1
        listed = cluster_nodes(sub, second)
        return set(listed) == rest and all(
            is_ready(n) and n["status"]["conditions"][0]["lastHeartbeatTime"] > since for n in listed.values()
        )

    def heartbeats() -> dict:
        return {
            k: (is_ready(n), n["status"]["conditions"][0]["lastHeartbeatTime"])
            for k, n in cluster_nodes(sub, second).items()
        }

    deadline = time.monotonic() + 60
    while not all_beating_since(removed_at):
        assert time.monotonic() < deadline, f"not all beating since {removed_at}: {heartbeats()}"
        time.sleep(2)
    out, data = sc.up()
    assert out.returncode == 0, sc.failure(out, data)
    configs = {n.name: json.loads(sub.run(n, "grep -v '^#' /etc/rancher/k3s/config.yaml").stdout) for n in nodes[1:]}
    assert configs["k2s2"]["cluster-init"] is True and "server" not in configs["k2s2"]
    for name in ("k2s3", "k2ag1", "k2ag2"):
        assert configs[name]["server"] == f"https://{second.address}:6443", name
    converged_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    deadline = time.monotonic() + 60
    while not all_beating_since(converged_at):
        assert time.monotonic() < deadline, f"not all beating since {converged_at}: {heartbeats()}"
        time.sleep(2)


def test_node_lost_mid_run_then_rerun_converges_and_teardown_skips_a_gone_node(
    node_factory, fresh_nodes, piml, tmp_path
):
    sub = node_factory.substrate
    nodes = fresh_nodes(3, names=["k3srv", "k3ag1", "k3ag2"])
    server, agent1, victim = nodes
    sc = make_scenario(piml, tmp_path, nodes, name="lossy")
    env = dict(os.environ, KUBECONFIG=str(sc.kubeconfig), PYTHONUNBUFFERED="1", COLUMNS="200")
    proc = subprocess.Popen(
        [sys.executable, "-m", "piml", "up", "--accept-new-host-keys", "--until", "kubeconfig"],
        cwd=sc.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    cut = False
    try:
        for line in proc.stdout:  # the moment preflight has seen every node, the victim's cable is pulled
            if line.startswith("preflight:"):
                sub.cut_link(victim)
                cut = True
                break
        rest, err = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert cut
    assert proc.returncode == 1, rest + err
    assert f"{victim.name}: prepare: unreachable" in err and "failed on k3ag2" in err
    listed = cluster_nodes(sub, server)
    assert set(listed) == {"k3srv", "k3ag1"} and all(is_ready(n) for n in listed.values())
    assert (sc.root / ".piml/kubeconfig").exists()  # the others finished, kubeconfig too

    sub.restore_link(victim)
    out, data = sc.up()
    assert out.returncode == 0, sc.failure(out, data)
    assert changed_counts(data, "k3s")["k3srv"] == 0 and changed_counts(data, "k3s")["k3ag1"] == 0
    listed = cluster_nodes(sub, server)
    assert set(listed) == {"k3srv", "k3ag1", "k3ag2"} and all(is_ready(n) for n in listed.values())

    # teardown with an agent gone: reported and skipped, the rest removed, exit 1 (a target failed)
    sub.stop(agent1, hard=True)
    out = sc.piml("teardown", "--k3s", "--yes", timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "k3ag1: unreachable, skipped" in out.stderr
    for n in (server, victim):
        assert sub.run(n, "test -e /usr/local/bin/k3s", check=False).returncode == 1


def _with_host_var(inventory: dict, host: str, key: str, value) -> dict:
    for group in ("server", "agent"):
        hosts = inventory["k3s_cluster"]["children"][group].get("hosts") or {}
        if host in hosts:
            hosts[host] = {**(hosts[host] or {}), key: value}
    return inventory
