"""The ray_external hosts' service files as piml renders them: the launchd plist read back by plistlib (and
`plutil -lint` where this machine has it: macOS itself is not exercised here), the systemd unit's ExecStart
split the way systemd splits it, and what the stage refuses before touching a host."""

from __future__ import annotations

import json
import plistlib
import re
import shlex
import shutil
import subprocess

import pytest
import yaml

from piml.config import RAY_VERSION
from piml.inventory import Node, Role
from piml.inventory.model import RayWorker
from piml.rayext import units
from piml.rayext.stage import refusals, worker_vars
from piml.render.images import PYTHON

HEAD = units.Head("192.168.1.11:30637", RAY_VERSION, PYTHON)


def mac(**ray) -> Node:
    return Node("mac-mini", "192.168.1.50", Role.EXTERNAL, user="ada", ray=RayWorker(**ray))


def test_the_launchd_plist_runs_ray_start_as_the_user_kept_alive_with_the_mac_s_own_settings(tmp_path):
    plist = units.launchd_plist(mac(resources={"gpu_apple_mps": 1}, memory_gb=8), HEAD, "ada")
    data = plistlib.loads(plist)
    assert data["Label"] == units.LAUNCHD_LABEL and data["UserName"] == "ada"
    assert data["RunAtLoad"] is True and data["KeepAlive"] is True
    assert data["StandardOutPath"] == data["StandardErrorPath"] == units.LAUNCHD_LOG
    assert data["ExitTimeOut"] > units.DRAIN_S  # Ray drains for 30 s on SIGTERM
    args = data["ProgramArguments"]
    assert args[:4] == [f"{units.VENV}/bin/ray", "start", f"--address={HEAD.gcs_address}", "--block"]
    assert "--num-gpus=0" in args  # Ray 2.60 would count the Apple GPU as a CUDA-style GPU: 1
    assert '--resources={"gpu_apple_mps":1}' in args and f"--memory={8 * 1024**3}" in args
    assert "--labels=piml.io/host=mac-mini" in args
    env = data["EnvironmentVariables"]
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "1" and env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == units.TOKEN_FILE and "RAY_AUTH_TOKEN" not in env
    if shutil.which("plutil"):
        (tmp_path / "worker.plist").write_bytes(plist)
        assert subprocess.run(["plutil", "-lint", str(tmp_path / "worker.plist")]).returncode == 0


@pytest.mark.parametrize("resources", [{"gpu_cuda": 1}, {"odd%name$x": 2, 'q"uote': 1}])
def test_the_systemd_unit_gives_ray_start_its_arguments_intact(resources):
    node = Node("box", "192.168.1.60", Role.EXTERNAL, ray=RayWorker(resources=resources, num_gpus=1))
    text = units.systemd_unit(node, HEAD, "ray")
    line = next(x for x in text.splitlines() if x.startswith("ExecStart="))
    # systemd: quotes like a shell, then %% -> % and $$ -> $
    split = [arg.replace("%%", "%").replace("$$", "$") for arg in shlex.split(line.removeprefix("ExecStart="))]
    assert split == units.start_args(node, HEAD, "Linux")
    assert "User=ray" in text and "Restart=always" in text and "SuccessExitStatus=1" in text
    assert "--num-gpus=1" in split  # Linux: only what the inventory says


def test_a_host_that_could_never_join_is_refused_before_anything_runs(piml, tmp_path):
    assert refusals([mac(python="3.11.9"), mac()], "3.11") == []
    (problem,) = refusals([mac(python="3.12")], "3.11")
    assert problem.what.startswith("piml_ray_python 3.12 of 'mac-mini' differs") and "'3.11'" in problem.fix
    # through the CLI: exit 2 at the host's inventory line, before the cluster or any host is asked (dry run too)
    out = piml("init", "lab", "--node", "s1=127.0.0.9:server", "--node", "mac=127.0.0.10:external", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    inventory = tmp_path / "lab/inventory/hosts.yml"
    data = yaml.safe_load(inventory.read_text())
    data["ray_external"]["hosts"]["mac"] = {"ansible_host": "mac-mini.local", "piml_ray_python": "3.12"}
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    for extra in ((), ("--dry-run",)):
        out = piml("up", "--only", "ray-external", *extra, "-C", str(tmp_path / "lab"))
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 2 and all(re.match(r"error: \S*inventory/hosts\.yml:\d+: ", x) for x in lines), lines
        assert "3.12" in lines[0] and "'mac-mini.local', a name" in lines[1], lines


def test_the_playbook_s_variables_hold_no_jinja_and_the_token_only_in_its_own_variable():
    data = worker_vars([mac(resources={"{{ lookup('pipe', 'id') }}": 1})], HEAD, "s3cret", ["--index-url", "x"])
    host = data["piml_ray_workers"]["mac-mini"]
    assert "{{" not in str(host) and "s3cret" not in str(host)  # base64: Ansible templates nothing in them
    assert data["piml_ray_token"] == "s3cret" and data["piml_ray_version"] == RAY_VERSION
    assert host["python"] == PYTHON


def test_plan_and_dry_run_show_the_hosts_outside_the_cluster(piml, tmp_path):
    out = piml("init", "lab", "--model", "pi5", "--memory-gb", "8", "--node", "s1=10.0.0.1:server",
               "--node", "mac=10.0.0.50:external", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    root = tmp_path / "lab"
    inventory = root / "inventory/hosts.yml"
    data = yaml.safe_load(inventory.read_text())
    data["ray_external"]["hosts"]["mac"].update(
        {"piml_ray_num_cpus": 8, "piml_ray_memory_gb": 16, "piml_ray_resources": {"gpu_apple_mps": 1}}
    )
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    out = piml("plan", "--json", "-C", str(root))
    assert out.returncode == 0, out.stderr
    (mac,) = json.loads(out.stdout)["ray_external"]
    assert (mac["name"], mac["num_cpus"], mac["memory_gb"], mac["resources"]) == ("mac", 8, 16.0, {"gpu_apple_mps": 1})
    out = piml("plan", "-C", str(root))
    assert "ray outside the cluster: mac (10.0.0.50): 8 CPU, 16 GB, gpu_apple_mps 1" in out.stdout
    out = piml("up", "--dry-run", "--json", "-C", str(root))
    (line,) = json.loads(out.stdout)["stages"]["ray-external"]
    assert line.startswith("mac: Ray ") and "offering 8 CPU, 16 GB, gpu_apple_mps 1" in line


def test_the_pods_networks_are_routed_through_their_nodes_while_the_worker_runs():
    head = units.Head(HEAD.gcs_address, RAY_VERSION, PYTHON, routes=(("10.42.0.0/24", "192.168.1.11"),))
    unit = units.systemd_unit(mac(), head, "ray")
    assert "ExecStartPre=+/sbin/ip route replace 10.42.0.0/24 via 192.168.1.11" in unit  # as root, before Ray
    assert "ExecStopPost=+-/sbin/ip route del 10.42.0.0/24 via 192.168.1.11" in unit
    data = plistlib.loads(units.launchd_routes_plist(head))
    assert data["Label"] == units.LAUNCHD_ROUTES_LABEL and "UserName" not in data  # root: routes need it
    assert "/sbin/route -n add -net 10.42.0.0/24 192.168.1.11" in data["ProgramArguments"][2]
    assert units.launchd_routes_plist(HEAD) is None


def test_routes_come_from_each_node_s_pod_cidr_and_internal_address():
    from piml.rayext.head import pod_routes

    def node(cidr, *addresses):
        return {
            "spec": {"podCIDR": cidr} if cidr else {},
            "status": {"addresses": [dict(zip(("type", "address"), a, strict=True)) for a in addresses]},
        }

    nodes = [
        node("10.42.1.0/24", ("InternalIP", "10.0.0.2")),
        node("10.42.0.0/24", ("Hostname", "s1"), ("InternalIP", "10.0.0.1")),
        node(None, ("InternalIP", "10.0.0.3")),  # no podCIDR yet
    ]
    assert pod_routes(nodes) == (("10.42.0.0/24", "10.0.0.1"), ("10.42.1.0/24", "10.0.0.2"))


def test_without_a_ready_ray_head_the_stage_fails_in_one_line_and_touches_no_host(piml, tmp_path):
    """The kubeapi stand-in holds no platform (`piml up --only platform` not run): nothing is installed anywhere."""
    from tests.standins.kubeapi.server import FakeKubeAPI

    out = piml("init", "lab", "--node", "s1=127.0.0.9:server", "--node", "mac=127.0.0.10:external", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    root = tmp_path / "lab"
    api = FakeKubeAPI().start()
    try:
        api.write_kubeconfig(root / ".piml/kubeconfig")
        out = piml("up", "--only", "ray-external", "--json", "-C", str(root))
    finally:
        api.stop()
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    data = json.loads(out.stdout)
    assert list(data["failed"]) == ["ray head"], data
    assert "no Service ray-head-external" in data["failed"]["ray head"] and "--only platform" in out.stderr, data
    assert data["stages"]["ray-external"]["hosts"] == {}  # no host was touched
