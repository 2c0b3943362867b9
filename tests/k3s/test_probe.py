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
    out = subprocess.run(
        [sys.executable, "-c", PROBE.read_text(), json.dumps(want)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
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
    return {
        "prepare": {
            "hostname": "",
            "hosts_regexp": "^x",
            "hosts_line": "x",
            "cgroup_flags": [],
            "want_4k": False,
            "config_markers": ["# BEGIN x", "# END x"],
            "config_block": "",
            "fstab_regexp": "^$^",
            "files": files,
            "modules": [],
            "sysctls": {},
            "packages": [],
        }
    }


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
    state = probe(
        {"k3s": {"unit": "piml-no-such-unit", "hash": [str(tmp_path / "k3s-airgap-images-*"), str(tmp_path / "nope")]}}
    )["k3s"]
    assert state["files"] == {
        str(images): {"sha1": hashlib.sha1(b"images").hexdigest(), "mode": "0644"},
        str(tmp_path / "nope"): None,
    }
    assert state["active"] != "active" and state["port"] is None and state["ready"] is None


def test_airgap_checksums_cover_the_files_the_playbook_copies(tmp_path):
    for name, data in (
        ("k3s", b"bin"),
        ("k3s-arm64", b"arm"),
        ("install.sh", b"sh"),
        ("k3s-airgap-images-arm64.tar.zst", b"img"),
        ("README", b"no"),
    ):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "k3s-dir").mkdir()
    sums = airgap_checksums(tmp_path)
    assert sums == {
        name: hashlib.sha1(data).hexdigest()
        for name, data in (
            ("k3s", b"bin"),
            ("k3s-arm64", b"arm"),
            ("install.sh", b"sh"),
            ("k3s-airgap-images-arm64.tar.zst", b"img"),
        )
    }


def test_a_check_that_breaks_means_differs():
    node = probe({"prepare": {"hostname": ""}, "k3s": {}})  # both wants lack keys the checks need
    assert node["prepare_differs"] and node["prepare_differs"][0].startswith("probe: ")
    assert node["k3s"]["error"] and node["k3s"]["active"] == "" and node["k3s"]["ready"] is None


# --- 4 KB pages: the probe and prepare.yml decide alike ------------------------------------------------------------
# The probe's "nothing to change" must hold exactly when the playbook would change nothing, or the fast path
# skips a needed change (or a re-run is never fast). prepare.yml's own expressions are evaluated here with
# Ansible's templating, on the same node states the probe's functions see.

PLAYBOOK = playbooks_dir() / "prepare.yml"


def probe_functions() -> dict:
    """probe.py's functions, without running its main() (it runs only as __main__)."""
    namespace: dict = {"__name__": "piml_probe"}
    exec(compile(PROBE.read_text(), str(PROBE), "exec"), namespace)
    return namespace


def _trusted(value):
    from ansible.template import trust_as_template

    if isinstance(value, str):
        return trust_as_template(value)
    if isinstance(value, dict):
        return {k: _trusted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_trusted(v) for v in value]
    return value


class Prepare:
    """prepare.yml's vars and the `when` / `state` of its page-size tasks, templated by Ansible itself."""

    def __init__(self):
        from ansible.parsing.dataloader import DataLoader

        self.loader = DataLoader()
        play = self.loader.load_from_file(str(PLAYBOOK))[0]
        self.vars = _trusted(dict(play["vars"]))
        tasks = play["tasks"]
        self.block_task = next(t for t in tasks if "ansible.builtin.blockinfile" in t)
        self.reboot_task = next(
            t for t in tasks if "block" in t and any("ansible.builtin.reboot" in b for b in t["block"])
        )
        self.verify_task = next(t for t in tasks if t["name"] == "Verify the page size")

    def templar(self, want_4k, node):
        from ansible.template import Templar

        variables = {**self.vars, "_node": node, "inventory_hostname": "pi1", "_cmdline_changed": {"changed": False}}
        if want_4k is not None:
            variables["piml_pi5_4k_pages"] = want_4k
        return Templar(loader=self.loader, variables=variables)

    @staticmethod
    def value(templar, text):
        from ansible.template import trust_as_template

        return templar.template(trust_as_template(text))

    def condition(self, templar, when) -> bool:
        return bool(self.value(templar, "{{ (" + " ".join(str(when).split()) + ") | bool }}"))

    def decide(self, want_4k, node) -> dict:
        t = self.templar(want_4k, node)
        block = self.block_task
        runs = self.condition(t, block["when"])
        state = self.value(t, block["ansible.builtin.blockinfile"]["state"]) if runs else None
        changed = (
            state is not None and (state == "present") != node["pages_block"]
        )  # our configs: block exact or absent
        t.available_variables = {**t.available_variables, "_config_changed": {"changed": changed}}  # as registered
        return {
            "want": self.value(t, "{{ _probe_want }}"),
            "state": state,
            "changed": changed,
            "reboot": self.condition(t, self.reboot_task["when"]),
            "verify": self.condition(t, self.verify_task["when"]),
        }


def _pages_node(tmp_path, want, kind, page_size, kernel8, block):
    """A node state as probe.py's main() would report it, with a real boot dir holding config.txt (with or
    without piml's block, exactly as blockinfile writes it) and, or not, kernel8.img."""
    boot = tmp_path / f"{kind}-{page_size}-{kernel8}-{block}"
    boot.mkdir()
    text = "dtparam=audio=on\n[all]\n"
    if block:
        begin, end = want["config_markers"]
        text += begin + "\n" + want["config_block"] + end + "\n"
    (boot / "config.txt").write_text(text)
    (boot / "cmdline.txt").write_text("console=tty1 root=PARTUUID=x cgroup_enable=memory cgroup_memory=1\n")
    if kernel8:
        (boot / "kernel8.img").write_bytes(b"kernel")
    node = {
        "kind": kind,
        "boot_dir": str(boot),
        "kernel8": kernel8,
        "page_size": page_size,
        "memory_cgroup": True,
        "swap_active": 0,
        "dphys_swapfile": False,
        "container": False,
    }
    node["pages_block"] = block  # what probe.py's pages_block() finds there (test_probe_reports_kernel8_and_piml_block)
    return node


def test_page_size_decisions_agree_between_probe_and_playbook(tmp_path):
    probe = probe_functions()
    prepare = Prepare()
    want_on = prepare.decide(
        True, {"kind": "other", "boot_dir": "", "kernel8": False, "page_size": 4096, "pages_block": False}
    )["want"]["prepare"]
    assert want_on["want_4k"] is True and len(want_on["config_markers"]) == 2
    outcomes = {}
    for kind in ("pi5", "cm4"):
        for want_4k in (True, False, None):  # None: the variable unset (someone running the playbook by hand)
            for page_size in (4096, 16384):
                for kernel8 in (True, False):
                    for block in (True, False):
                        base = tmp_path / f"w{want_4k}"
                        base.mkdir(exist_ok=True)
                        node = _pages_node(base, want_on, kind, page_size, kernel8, block)
                        decided = prepare.decide(want_4k, node)
                        want = dict(
                            decided["want"]["prepare"],
                            hostname="",
                            files={},
                            modules=[],
                            sysctls={},
                            packages=[],
                            fstab_regexp="^$^",
                        )
                        differs = probe["prepare_differs"](want, node)
                        key = (kind, want_4k, page_size, kernel8, block)
                        assert ("config.txt" in differs) == decided["changed"], (key, differs, decided)
                        assert ("page size" in differs) == decided["reboot"], (key, differs, decided)
                        assert decided["verify"] == (decided["state"] == "present"), (
                            key,
                            decided,
                        )  # 4 KB checked where asked
                        outcomes[key] = (decided["state"], decided["reboot"])
    # What the issue asks for, case by case (state of piml's block in config.txt, reboot):
    assert outcomes["pi5", True, 16384, True, False] == ("present", True)  # Raspberry Pi OS on a Pi 5, 4 KB asked for
    assert outcomes["pi5", True, 4096, False, False] == (
        "absent",
        False,
    )  # Ubuntu: vmlinuz, 4 KB already, no kernel8.img
    assert outcomes["pi5", True, 16384, False, False] == ("absent", False)  # 16 KB but no kernel8.img: left alone
    assert outcomes["pi5", False, 16384, True, False] == ("absent", False)  # not asked for (auto): no switch, no reboot
    assert outcomes["pi5", None, 16384, True, False] == ("absent", False)  # by hand, unset: the same
    assert outcomes["pi5", True, 4096, True, True] == ("present", False)  # switched earlier: kept, nothing to do
    assert outcomes["pi5", True, 16384, True, True] == ("present", True)  # written but not yet booted: reboot
    assert outcomes["pi5", False, 4096, True, True] == ("absent", False)  # no longer asked for: removed, no reboot
    assert outcomes["pi5", True, 4096, True, False] == ("absent", False)  # 4 KB already without piml: nothing
    assert all(state is None and not reboot for (kind, *_), (state, reboot) in outcomes.items() if kind == "cm4")


def test_probe_reports_kernel8_and_piml_block(tmp_path):
    functions = probe_functions()
    pages_block = functions["pages_block"]
    markers = ["# BEGIN piml", "# END piml"]
    (tmp_path / "config.txt").write_text("a=1\n# BEGIN piml\n[all]\nkernel=kernel8.img\n# END piml\n")
    assert pages_block(str(tmp_path), markers) is True
    assert pages_block(str(tmp_path), None) is False and pages_block("", markers) is False
    (tmp_path / "config.txt").write_text("a=1\n# BEGIN piml\n")
    assert pages_block(str(tmp_path), markers) is False
    node = probe({})  # the real probe on this machine: the fields the playbook reads are there
    assert isinstance(node["kernel8"], bool) and node["pages_block"] is False
