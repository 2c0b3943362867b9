"""`piml render --out` (issue 16): a blank, unwritable or impossible --out is one line and exit 2 (was "internal
error", exit 1, or for `--out ''` the files silently written into the working directory), and no rendered file is
ever written over one of render's inputs (the inventory, piml.yaml, the project's state), also through a link."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.misuse import one_error


def piml(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "piml", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def snapshot(root: Path) -> dict[str, str]:
    """Every file under `root` (links as their target text) and its content's digest: what must not change."""
    seen = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            seen[str(path.relative_to(root))] = "-> " + os.readlink(path)
        elif path.is_file():
            seen[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            seen[str(path.relative_to(root))] = "dir"
    return seen


@pytest.fixture
def project(tmp_path) -> Path:
    from piml.scaffold import init_project, parse_node_spec

    root = tmp_path / "rack"
    init_project(root, [parse_node_spec("pi1=198.18.0.11")], "pi", None, "pi5", False, 8)
    return root


@pytest.mark.parametrize("blank", ["", " "])
def test_blank_out(project, blank):
    before = snapshot(project)
    one_error(piml("render", "--out", blank, cwd=project), "--out", "empty")
    assert snapshot(project) == before


@pytest.mark.parametrize(
    "where",
    [
        "/proc/piml-render-test",  # the kernel's file system: no directories made there
        "/proc/self/piml-render-test",
        "/dev/full/manifests",  # below a device
        "piml.yaml/manifests",  # below a plain file
        "x" * 300,  # a name too long for the file system
        "deep/" + "y" * 300 + "/m",
    ],
    ids=["proc", "proc-self", "below-a-device", "below-a-file", "name-too-long", "part-too-long"],
)
def test_unwritable_out(project, where):
    before = snapshot(project)
    one_error(piml("render", "--out", where, cwd=project), "--out")
    assert snapshot(project) == before


def test_out_is_a_fifo(project):
    os.mkfifo(project / "pipe")
    before = snapshot(project)
    one_error(piml("render", "--out", "pipe", cwd=project), "--out", "not a directory")
    assert snapshot(project) == before


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
@pytest.mark.parametrize("source, name", [("piml.yaml", "00-namespace.yaml"), ("inventory/hosts.yml", "03-ray.yaml")])
def test_never_over_an_input_through_a_link(project, link, source, name):
    """A file in the --out directory that is the inventory or piml.yaml under the name of a rendered file."""
    out = project / "manifests"
    out.mkdir()
    (os.symlink if link == "symlink" else os.link)(project / source, out / name)
    before = snapshot(project)
    line = one_error(piml("render", "--out", "manifests", cwd=project), "--out", name, "input")
    assert snapshot(project) == before, line


def test_never_over_the_inventory_named_like_a_rendered_file(tmp_path, project):
    """`piml render -i DIR/00-namespace.yaml --out DIR` would replace the inventory it read."""
    inventory = tmp_path / "gitops" / "00-namespace.yaml"
    inventory.parent.mkdir()
    inventory.write_text((project / "inventory" / "hosts.yml").read_text())
    before = snapshot(tmp_path / "gitops")
    one_error(piml("render", "-i", inventory, "--out", inventory.parent, cwd=project), "input")
    assert snapshot(tmp_path / "gitops") == before


def test_never_over_the_projects_secrets(project):
    """--out .piml: rendered files beside the secrets are allowed, but not in place of one of them."""
    state = project / ".piml"
    os.link(state / "id_ed25519", project / "06-ingress.yaml")
    before = snapshot(project)
    one_error(piml("render", "--out", ".", cwd=project), "06-ingress.yaml", "input")
    assert snapshot(project) == before


def test_rendering_again_into_the_same_directory_still_works(project):
    first = piml("render", "--out", "manifests", cwd=project)
    assert first.returncode == 0, first.stderr
    files = sorted(p.name for p in (project / "manifests").iterdir())
    assert files and all(name.endswith(".yaml") for name in files)
    again = piml("render", "--out", "manifests", cwd=project)
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in (project / "manifests").iterdir()) == files
