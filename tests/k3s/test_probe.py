"""The node probe (playbooks/files/probe.py) run locally, and the air-gap checksums piml hands the k3s playbook."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from piml.k3s.stages import airgap_checksums
from piml.paths import playbooks_dir

PROBE = playbooks_dir() / "files" / "probe.py"


def probe(want: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.read_text(), json.dumps(want)], capture_output=True, text=True,
                         timeout=60, check=True)
    marker, _, rest = out.stdout.partition("PIML-PROBE ")
    assert marker == "" and rest.endswith("\n")
    return json.loads(rest)


def test_probe_is_not_a_template():
    # probe.yml passes the file through Ansible's templating: it must hold nothing Jinja would expand
    text = PROBE.read_text()
    assert "{{" not in text and "{%" not in text and "{#" not in text
    compile(text, str(PROBE), "exec")


def test_plain_probe_reports_the_basics():
    node = probe({})
    assert {"kind", "boot_dir", "memory_cgroup", "page_size", "swap_active", "container", "arch"} <= set(node)
    assert "prepare_differs" not in node and "k3s" not in node


def _prepare_want(files: dict[str, str]) -> dict:
    return {"prepare": {"hostname": "", "hosts_regexp": "^x", "hosts_line": "x", "cgroup_flags": [], "want_4k": False,
                        "config_markers": ["# BEGIN x", "# END x"], "config_block": "", "fstab_regexp": "^$^",
                        "files": files, "modules": [], "sysctls": {}, "packages": []}}


def test_prepare_file_checks_compare_content_and_mode(tmp_path):
    same, other_mode, other_text, missing = (tmp_path / n for n in ("same", "mode", "text", "missing"))
    for path in (same, other_mode, other_text):
        path.write_text("a\nb\n")
        os.chmod(path, 0o644)
    os.chmod(other_mode, 0o600)
    other_text.write_text("a\nb")
    link = tmp_path / "link"
    link.symlink_to(same)
    files = {str(p): "a\nb\n" for p in (same, other_mode, other_text, missing, link)}
    differs = probe(_prepare_want(files))["prepare_differs"]
    assert str(same) not in differs
    assert {str(other_mode), str(other_text), str(missing), str(link)} <= set(differs)


def test_k3s_state_hashes_the_asked_files(tmp_path):
    images = tmp_path / "k3s-airgap-images-amd64.tar.zst"
    images.write_bytes(b"images")
    os.chmod(images, 0o644)
    state = probe({"k3s": {"unit": "piml-no-such-unit", "hash": [str(tmp_path / "k3s-airgap-images-*"), str(tmp_path / "nope")]}})["k3s"]
    assert state["files"] == {str(images): {"sha1": hashlib.sha1(b"images").hexdigest(), "mode": "0644"},
                              str(tmp_path / "nope"): None}
    assert state["active"] != "active" and state["port"] is None and state["ready"] is None


def test_airgap_checksums_cover_the_files_the_playbook_copies(tmp_path):
    for name, data in (("k3s", b"bin"), ("k3s-arm64", b"arm"), ("install.sh", b"sh"),
                       ("k3s-airgap-images-arm64.tar.zst", b"img"), ("README", b"no")):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "k3s-dir").mkdir()
    sums = airgap_checksums(tmp_path)
    assert sums == {name: hashlib.sha1(data).hexdigest() for name, data in
                    (("k3s", b"bin"), ("k3s-arm64", b"arm"), ("install.sh", b"sh"), ("k3s-airgap-images-arm64.tar.zst", b"img"))}


def test_a_check_that_breaks_means_differs():
    node = probe({"prepare": {"hostname": ""}, "k3s": {}})  # both wants lack keys the checks need
    assert node["prepare_differs"] and node["prepare_differs"][0].startswith("probe: ")
    assert node["k3s"]["error"] and node["k3s"]["active"] == "" and node["k3s"]["ready"] is None
