"""Helpers for the k3s tests: scenario projects on test nodes, with the k3s stand-in as the air-gap dir."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "tests" / "standins" / "k3s-airgap"
VERSION = "v1.36.3+k3s1"  # what the stand-in reports; piml's default pin


def make_airgap(directory: Path) -> Path:
    """An air-gap dir as a user would lay it out: k3s (amd64: the test nodes are x86), install.sh and a
    tiny images tarball (a real tar, zstd-compressed, holding one small file)."""
    import zstandard

    directory.mkdir(parents=True, exist_ok=True)
    for name in ("k3s", "install.sh"):
        shutil.copy2(STANDIN / name, directory / name)
        os.chmod(directory / name, 0o755)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        data = b'{"note": "piml test stand-in images tarball: no images inside"}\n'
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (directory / "k3s-airgap-images-amd64.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(raw.getvalue()))
    return directory


@dataclass
class Scenario:
    root: Path  # the project
    nodes: list  # test nodes, inventory order
    kubeconfig: Path  # $KUBECONFIG for this scenario

    @property
    def name(self) -> str:
        return self.root.name

    def piml(self, *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), COLUMNS="200")
        return subprocess.run(
            [sys.executable, "-m", "piml", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )

    def up(self, *args: str, timeout: float = 420) -> tuple[subprocess.CompletedProcess, dict]:
        if not {"--only", "--until"} & set(args):
            args = (*args, "--until", "kubeconfig")  # the stand-in k3s serves no workloads: no platform stage
        out = self.piml("up", "--json", *args, timeout=timeout)
        assert "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
        try:
            data = json.loads(out.stdout)
        except ValueError:
            raise AssertionError(
                f"piml up printed no JSON (exit {out.returncode}):\n{out.stdout}\n{out.stderr}"
            ) from None
        return out, data

    @staticmethod
    def failure(out: subprocess.CompletedProcess, data: dict | None = None) -> str:
        """What went wrong in a `piml up --json` run, short enough to survive a CI log's tail: the failed
        nodes, each stage's result without the preflight rows, then the end of stderr."""
        data = data or {}
        stages = {stage: value for stage, value in (data.get("stages") or {}).items() if stage != "preflight"}
        preflight = [row for row in (data.get("stages") or {}).get("preflight") or [] if row.get("status") == "fail"]
        return "\n".join(
            [
                f"exit {out.returncode}; failed: {json.dumps(data.get('failed'))}",
                f"preflight failures: {json.dumps(preflight)}",
                f"stages: {json.dumps(stages)[:6000]}",
                "--- stderr (tail):",
                out.stderr[-4000:],
            ]
        )

    def inventory(self) -> dict:
        return yaml.safe_load((self.root / "inventory/hosts.yml").read_text())

    def write_inventory(self, data: dict) -> None:
        (self.root / "inventory/hosts.yml").write_text(yaml.safe_dump(data, sort_keys=False))

    def add_node(self, node, role: str = "agent", **host_vars) -> None:
        data = self.inventory()
        group = data["k3s_cluster"]["children"][role]
        group["hosts"] = group.get("hosts") or {}
        group["hosts"][node.name] = {"ansible_host": node.address, **host_vars}
        self.write_inventory(data)
        self.nodes.append(node)


def make_scenario(
    piml,
    base: Path,
    nodes: list,
    servers: int = 1,
    name: str = "rack",
    token: str | None = None,
    host_vars: dict | None = None,
    config: dict | None = None,
) -> Scenario:
    """A project for `nodes` (the first `servers` are servers), k3s from the stand-in air-gap dir."""
    base.mkdir(parents=True, exist_ok=True)
    args = ["init", name, "--ssh-key", nodes[0].key_path]
    for index, node in enumerate(nodes):
        args += ["--node", f"{node.name}={node.address}:{'server' if index < servers else 'agent'}"]
    out = piml(*args, cwd=base)
    assert out.returncode == 0, out.stderr
    root = base / name
    airgap = make_airgap(base / "airgap")
    settings = {"k3s": {"airgap_dir": str(airgap), "wait_timeout": 60}, "nodes": {"reboot_timeout": 120}}
    for key, value in (config or {}).items():
        settings.setdefault(key, {}).update(value)
    (root / "piml.yaml").write_text(yaml.safe_dump(settings))
    scenario = Scenario(root, list(nodes), base / "kube" / "config")
    if token or host_vars:
        data = scenario.inventory()
        if token:
            data["k3s_cluster"]["vars"]["token"] = token
        for group in ("server", "agent"):
            for host, values in (data["k3s_cluster"]["children"][group].get("hosts") or {}).items():
                values.update((host_vars or {}).get(host, {}))
        scenario.write_inventory(data)
    return scenario


def changed_counts(data: dict, stage: str) -> dict[str, int]:
    return {host: stats["changed"] for host, stats in data["stages"][stage]["hosts"].items()}


def cluster_nodes(sub, server) -> dict[str, dict]:
    """The node list as the first server's API reports it: name -> Node object."""
    out = sub.run(server, "/usr/local/bin/k3s kubectl get nodes -o json", timeout=30).stdout
    return {item["metadata"]["name"]: item for item in json.loads(out)["items"]}


def is_ready(node: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
