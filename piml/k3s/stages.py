"""The stages `piml up` runs after preflight: prepare, k3s, kubeconfig; and `piml teardown --k3s`.

Each takes the one Cluster model and the nodes still in the running, and returns a StageResult
per node. prepare and k3s are playbooks (piml/ansible); kubeconfig reads one file over piml's own SSH.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from piml.errors import InputError, Problem
from piml.inventory import Node, Role

if TYPE_CHECKING:
    from piml.ansible.runner import PlaybookResult
    from piml.project import Cluster

PLAYBOOKS = {"prepare": "prepare.yml", "k3s": "k3s.yml"}
K3S_YAML = "/etc/rancher/k3s/k3s.yaml"


@dataclass
class StageResult:
    stage: str
    hosts: dict[str, dict] = field(default_factory=dict)  # node -> {ok, changed, failed, unreachable, status}
    failures: dict[str, str] = field(default_factory=dict)  # node (or "cluster") -> message
    warnings: dict[str, str] = field(default_factory=dict)  # node -> what went wrong that fails nothing
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str = ""  # why the stage did not run

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def changed(self) -> int:
        return sum(h.get("changed", 0) for h in self.hosts.values())

    def as_dict(self) -> dict:
        data = {"ok": self.ok, "hosts": self.hosts, "failures": self.failures, "seconds": round(self.seconds, 2)}
        if self.notes:
            data["notes"] = self.notes
        if self.warnings:
            data["warnings"] = self.warnings
        if self.skipped:
            data["skipped"] = self.skipped
        return data


# -- settings handed to the playbooks -----------------------------------------------------------------


def k3s_version(cluster: Cluster) -> str:
    """piml.yaml's k3s.version when set there, else the inventory's k3s_version, else piml's pin."""
    if "version" in cluster.config.k3s.model_fields_set:
        return cluster.config.k3s.version
    return cluster.inventory.k3s_vars.k3s_version or cluster.config.k3s.version


def airgap_dir(cluster: Cluster) -> Path | None:
    text = cluster.config.k3s.airgap_dir or cluster.inventory.k3s_vars.airgap_dir
    if not text:
        return None
    path = Path(str(text)).expanduser()
    path = path if path.is_absolute() else cluster.paths.root / path
    return path.resolve()


def check_airgap(cluster: Cluster, arches: set[str]) -> Path | None:
    path = airgap_dir(cluster)
    if path is None:
        return None
    where = cluster.paths.show(cluster.paths.config)
    if not path.is_dir():
        raise InputError(
            Problem(
                where,
                f"k3s.airgap_dir '{path}' is not a directory",
                "create it with the k3s binary, install.sh and the images tarball, or remove the setting",
            )
        )
    missing = [] if (path / "install.sh").is_file() else ["install.sh"]
    for arch in sorted(arches or {"arm64"}):
        binary = "k3s" if arch == "amd64" else f"k3s-{arch}"
        if not (path / binary).is_file():
            missing.append(binary)
    if missing:
        raise InputError(
            Problem(
                where,
                f"k3s.airgap_dir '{path}' lacks {', '.join(missing)}",
                "download them from the k3s release (install.sh from https://get.k3s.io)",
            )
        )
    return path


def wants_4k_pages(cluster: Cluster) -> bool:
    """Only an explicit `nodes.pi5_4k_pages: true` (piml.yaml's `auto` reads as false: no platform image needs
    4 KB pages, docs/facts.md); prepare.yml then switches only a Pi 5 on 16 KB pages that has kernel8.img."""
    return cluster.config.nodes.pi5_4k_pages is True


def prepare_vars(cluster: Cluster, airgap: Path | None) -> dict:
    return {
        "piml_pi5_4k_pages": wants_4k_pages(cluster),
        "piml_reboot_timeout": cluster.config.nodes.reboot_timeout,
        **({"airgap_dir": str(airgap)} if airgap else {}),
    }


def k3s_vars(cluster: Cluster, airgap: Path | None, token: str) -> dict:
    from piml.plan.capacity import kubelet_args

    data = {
        "token": token,
        "k3s_version": k3s_version(cluster),
        "piml_k3s_disable": list(cluster.config.k3s.disable),
        "piml_k3s_wait_timeout": cluster.config.k3s.wait_timeout,
        # the capacity plan's reservations, as each node's kubelet-arg: its allocatable is what the plan counts
        "piml_kubelet_args": kubelet_args(cluster),
    }
    if airgap:
        data["airgap_dir"] = str(airgap)
        data["piml_airgap_sha1"] = airgap_checksums(airgap)
    return data


def airgap_checksums(airgap: Path) -> dict[str, str]:
    """sha1 of each air-gap file the k3s playbook copies (name -> hex): with them it can tell, from one probe,
    that a node already has exactly these files and leave it (the copy tasks compare the same checksums)."""
    import hashlib

    sums = {}
    for path in sorted(airgap.iterdir()):
        if not (path.name in ("k3s", "install.sh") or path.name.startswith(("k3s-", "k3s-airgap-images-"))):
            continue
        if not path.is_file():
            continue
        digest = hashlib.sha1()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        sums[path.name] = digest.hexdigest()
    return sums


# -- running ---------------------------------------------------------------------------------------


def from_playbook(stage: str, result: PlaybookResult) -> StageResult:
    out = StageResult(
        stage, {h: s.as_dict() for h, s in result.hosts.items()}, dict(result.failures), seconds=result.seconds
    )
    for host in result.not_run:
        out.hosts[host]["status"] = "not run"
        if not result.failures or host in result.failures:
            continue
        out.failures[host] = f"not run: {', '.join(result.failures)} failed first"
    if result.error:
        out.failures["cluster"] = result.error
    return out


def run_playbook_stage(
    cluster: Cluster, stage: str, nodes: list[Node], extravars: dict, show: bool, playbook: str | None = None
) -> StageResult:
    from piml.ansible.progress import StageProgress
    from piml.ansible.runner import run_playbook

    names = [n.name for n in nodes]
    with StageProgress(stage, names, enabled=show) as progress:
        result = run_playbook(cluster, playbook or PLAYBOOKS[stage], names, extravars, progress.on_event)
    return from_playbook(stage, result)


def kubeconfig_stage(cluster: Cluster, merge: bool, show: bool) -> StageResult:
    import time

    from piml.k3s import kubeconfig as kc
    from piml.ssh.fleet import Fleet, Timeouts
    from piml.ssh.hostkeys import KnownHosts

    started = time.monotonic()
    result = StageResult("kubeconfig")
    first = cluster.inventory.servers[0]
    known = KnownHosts(cluster.paths.known_hosts, accept_new=False)
    with Fleet([first], known, Timeouts(connect=10.0, command=30.0)) as fleet:
        answer = fleet.run(f"cat {K3S_YAML}", sudo=True)[first.name]
    if not answer.ok:
        result.failures[first.name] = f"{answer.failure.reason}; {answer.failure.fix}"
        return result
    if answer.value.exit_code != 0:
        result.failures[first.name] = (
            f"cannot read {K3S_YAML}: {answer.value.stderr.strip()[-200:]}; run piml up --only k3s first"
        )
        return result
    port = cluster.inventory.k3s_vars.api_port
    ours = kc.for_project(answer.value.stdout, cluster.name, kc.server_url(cluster.inventory.api_endpoint, port))
    stored_path = cluster.paths.kubeconfig
    changed = kc.store(stored_path, kc.dump(ours))
    result.notes.append(f"stored {cluster.paths.show(stored_path)}" + ("" if changed else " (unchanged)"))
    merged_changed = False
    if merge:
        target = kc.default_target()
        written = kc.merge_into(target, ours)
        merged_changed = written.changed
        if written.changed:
            note = f"merged context '{cluster.name}' into {target}"
            if written.backup:
                note += f" (backup: {written.backup})"
            if written.rewritten:
                note += "; its layout needed a full rewrite: other entries kept, their formatting not"
            result.notes.append(note)
        else:
            result.notes.append(f"context '{cluster.name}' in {target} already up to date")
        current = _current_context(target)
        if current != cluster.name:
            result.notes.append(f"current context is '{current}': use `kubectl config use-context {cluster.name}`")
    result.hosts[first.name] = {
        "ok": 1,
        "changed": int(changed or merged_changed),
        "failed": 0,
        "unreachable": 0,
        "status": "changed" if changed or merged_changed else "ok",
    }
    result.seconds = time.monotonic() - started
    if show:
        from piml.output import console

        for note in result.notes:
            console().print(f"kubeconfig  {note}", markup=False)
    return result


def _current_context(path: Path) -> str:
    import yaml

    try:
        return (yaml.safe_load(path.read_text()) or {}).get("current-context") or ""
    except (OSError, yaml.YAMLError):
        return ""


# -- dry run ---------------------------------------------------------------------------------------


def describe(cluster: Cluster, stage: str, nodes: list[Node], merge: bool) -> list[str]:
    """What `stage` would do on each node, without touching anything."""
    from piml.k3s import kubeconfig as kc
    from piml.plan.capacity import reservation

    inventory = cluster.inventory
    servers = inventory.servers
    first = servers[0]
    if stage == "prepare":
        pages = (
            (
                "; on a Pi 5 running 16 KB pages whose boot partition has kernel8.img: kernel=kernel8.img in config.txt"
                " (4 KB pages)"
            )
            if wants_4k_pages(cluster)
            else ""
        )
        return [
            f"{n.name}: hostname {n.name} (+ /etc/hosts); cgroup_enable=memory cgroup_memory=1 in cmdline.txt if missing{pages}; "
            f"swap off; sysctls + modules overlay, br_netfilter; packages; reboot only if a boot setting changed "
            f"(wait <= {cluster.config.nodes.reboot_timeout} s) and verify"
            for n in nodes
            if n.role is not Role.EXTERNAL
        ]
    if stage == "k3s":
        source = f"air-gap files from {airgap_dir(cluster)}" if airgap_dir(cluster) else "the official install script"
        version = k3s_version(cluster)
        lines = []
        for n in nodes:
            if n.role is Role.EXTERNAL:
                continue
            if n is first:
                role = "first server" + (" with --cluster-init (HA, embedded etcd)" if len(servers) > 1 else "")
            elif n.role is Role.SERVER:
                role = f"server joining https://{inventory.api_endpoint}:6443"
            else:
                role = f"agent joining https://{inventory.api_endpoint}:6443"
            extras = [f"label {k}={v}" for k, v in n.labels.items()] + [f"taint {t}" for t in n.taints]
            kept = reservation(n)
            extras.append(f"the kubelet keeps {kept.cpu}m CPU, {kept.memory}Mi from pods")
            lines.append(
                f"{n.name}: k3s {version} as {role} from {source}"
                + (f"; {', '.join(extras)}" if extras else "")
                + f"; wait <= {cluster.config.k3s.wait_timeout} s for Ready; nothing if already so"
            )
        return lines
    if stage == "kubeconfig":
        line = f"{first.name}: read {K3S_YAML}, point it at {kc.server_url(inventory.api_endpoint)}, store .piml/kubeconfig (0600)"
        if merge:
            line += f", merge context '{cluster.name}' into {kc.default_target()} (backup kept)"
        return [line]
    return []
