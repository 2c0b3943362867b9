"""Hostile YAML (issue 16): an alias bomb ("billion laughs"), a merge-key bomb, deep nesting, a huge or endless file
in the inventory or piml.yaml is one located error, exit 2, within a few seconds and a few hundred MB.

Every case runs the real `piml` in a child process with its address space capped (RLIMIT_AS) and a timeout, so a
loader without bounds fails the test (MemoryError, "internal error", or the timeout) instead of eating the machine.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

MEMORY_CAP = 1024 * 1024 * 1024  # address space of the child: the interpreter and piml fit in far less
TIME_CAP = 30  # seconds; a bounded load takes well under one

INVENTORY = "k3s_cluster:\n  children:\n    server:\n      hosts:\n        pi1: {ansible_host: 198.18.0.11}\n"


def _capped() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def run_capped(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "piml", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIME_CAP,
        preexec_fn=_capped,
    )
    return out, time.monotonic() - start


def laughs(levels: int = 9, fan: int = 9, indent: str = "") -> str:
    """The classic: nine lists of nine aliases of the list before, 9**9 strings once expanded, in 10 lines."""
    lines = [f"{indent}lol0: &lol0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"{indent}lol{i}: &lol{i} [" + ", ".join([f"*lol{i - 1}"] * fan) + "]")
    return "\n".join(lines) + "\n"


def merge_bomb(levels: int = 40, indent: str = "") -> str:
    """Merge keys double a mapping at each level: PyYAML's own flattening alone would need 2**40 entries."""
    lines = [f"{indent}m0: &m0 {{x: 1}}"]
    lines += [f"{indent}m{i}: &m{i} {{<<: [*m{i - 1}, *m{i - 1}]}}" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def assert_one_located_error(out: subprocess.CompletedProcess, seconds: float, where: str, what: str) -> None:
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.returncode, out.stderr[-500:])
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {where}"), lines[0]
    assert what in lines[0] and "; " in lines[0] and "internal error" not in lines[0], lines[0]
    assert seconds < 15, seconds


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "p" / "inventory").mkdir(parents=True)
    (tmp_path / "p" / "inventory" / "hosts.yml").write_text(INVENTORY)
    (tmp_path / "p" / "piml.yaml").write_text("{}\n")
    return tmp_path / "p"


def test_alias_bomb_in_the_inventory(tmp_path):
    bomb = INVENTORY + "  vars:\n" + laughs(indent="    ")
    (tmp_path / "hosts.yml").write_text(bomb)
    out, seconds = run_capped("inventory", "check", "-i", "hosts.yml", cwd=tmp_path)
    # The list that first passes the bound: lol5 (9**5 strings, and more once lol0..lol4 are counted), line 12.
    assert_one_located_error(out, seconds, "hosts.yml:12:", "aliases expand to more than")


def test_alias_bomb_in_piml_yaml(project):
    (project / "piml.yaml").write_text("ray:\n" + laughs(indent="  "))
    out, seconds = run_capped("inventory", "check", cwd=project)
    assert_one_located_error(out, seconds, "piml.yaml:7:", "aliases expand to more than")


def test_merge_key_bomb(project):
    (project / "piml.yaml").write_text("ray:\n" + merge_bomb(indent="  "))
    out, seconds = run_capped("inventory", "check", cwd=project)
    assert_one_located_error(out, seconds, "piml.yaml:", "aliases expand to more than")


def test_aliases_of_a_long_text(project):
    """Few values, but 200 aliases of a 400 KB string are 80 MB of text for whatever prints or re-serialises it."""
    (project / "piml.yaml").write_text("ray:\n  s: &s " + "x" * 400_000 + "\n  l: [" + ", ".join(["*s"] * 200) + "]\n")
    out, seconds = run_capped("inventory", "check", cwd=project)
    assert_one_located_error(out, seconds, "piml.yaml:3:", "MiB of text")


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 200_000 + "]" * 200_000 + "\n",
        "a: " + "{a: " * 50_000 + "1" + "}" * 50_000 + "\n",
        "".join("  " * i + f"k{i}:\n" for i in range(800)),
        "".join("  " * i + "-\n" for i in range(800)),
    ],
    ids=["flow-lists", "flow-maps", "block-maps", "block-lists"],
)
def test_deep_nesting(project, text):
    (project / "piml.yaml").write_text(text)
    out, seconds = run_capped("inventory", "check", cwd=project)
    assert_one_located_error(out, seconds, "piml.yaml:", "nested more than")


def test_aliases_nested_deeply_through_a_chain(project):
    """Each alias one level deeper than the last: small, flat in the file, 300 levels deep once expanded."""
    (project / "piml.yaml").write_text("a0: &a0 [x]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 300)))
    out, seconds = run_capped("inventory", "check", cwd=project)
    assert_one_located_error(out, seconds, "piml.yaml:", "nest more than")


def test_a_huge_file_is_not_read_whole(tmp_path):
    (tmp_path / "hosts.yml").write_text(INVENTORY + "# " + "x" * (3 * 1024 * 1024) + "\n")
    out, seconds = run_capped("inventory", "check", "-i", "hosts.yml", cwd=tmp_path)
    assert_one_located_error(out, seconds, "hosts.yml:6:", "larger than")


def test_an_endless_file_is_not_read_forever(tmp_path):
    out, seconds = run_capped("inventory", "show", "-i", "/dev/zero", cwd=tmp_path)
    assert_one_located_error(out, seconds, "/dev/zero:1:", "larger than")


def test_a_wide_file(project):
    (project / "piml.yaml").write_text("ray: [" + ",".join(["1"] * 200_000) + "]\n")
    out, seconds = run_capped("inventory", "check", cwd=project)
    assert_one_located_error(out, seconds, "piml.yaml:1:", "more than 100000 values")


def test_ordinary_aliases_and_merge_keys_still_work(tmp_path):
    """What Ansible inventories really do with anchors is far inside the bounds."""
    text = (
        "k3s_cluster:\n  children:\n    server:\n      hosts:\n"
        "        pi1: &pi {ansible_host: 198.18.0.11, piml_labels: &labels {disk: nvme, zone: a}}\n"
        "    agent:\n      hosts:\n"
        "        pi2: {<<: *pi, ansible_host: 198.18.0.12}\n"
        "        pi3: {ansible_host: 198.18.0.13, piml_labels: *labels}\n"
    )
    (tmp_path / "hosts.yml").write_text(text)
    out, _ = run_capped("inventory", "show", "--json", "-i", "hosts.yml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    nodes = {node["name"]: node for node in json.loads(out.stdout)["nodes"]}
    assert nodes["pi2"]["address"] == "198.18.0.12"  # an own key overrides the merged one: not "appears twice"
    assert nodes["pi2"]["labels"] == nodes["pi3"]["labels"] == {"disk": "nvme", "zone": "a"}


def test_an_own_key_twice_beside_a_merge_is_still_an_error():
    from piml.errors import InputError
    from piml.yamlsrc import parse_yaml

    assert parse_yaml("a: &a {x: 1, y: 1}\nb: {<<: *a, x: 2}\n", "f.yml").data["b"] == {"x": 2, "y": 1}
    with pytest.raises(InputError, match="f.yml:2: key 'x' appears twice"):
        parse_yaml("a: &a {x: 1}\nb: {<<: *a, x: 2, x: 3}\n", "f.yml")
