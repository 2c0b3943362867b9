"""`piml flash --output` (issue 16): never writes over its own IMAGE (also through a symbolic or hard link), never
replaces an existing file without --force (nor anything that is not a plain file, even with it), and an image that
holds the Wi-Fi PSK is 0600 from its first byte, one by one with `--all --output DIR` too. `--output ''` is refused.

No root and no loop device: images are built from scratch (tests/flash/conftest.py's builder) and written to files.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from piml.errors import InputError
from tests.flash.conftest import SSH_PUB, build_image, read_fat_file
from tests.misuse import one_error

WIFI_YAML = "flash:\n  wifi_country: DE\n  wifi_ssid: Lab Net\n"
PASSPHRASE = "correct horse battery staple"


def piml(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), **(env or {})}
    full_env.pop("PIML_WIFI_PASSPHRASE", None) if env is None else None
    return subprocess.run(
        [sys.executable, "-m", "piml", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return build_image(tmp_path_factory.mktemp("images"), "bookworm").path


@pytest.fixture
def project(tmp_path) -> Path:
    from piml.scaffold import init_project, parse_node_spec

    root = tmp_path / "rack"
    init_project(
        root, [parse_node_spec(s) for s in ("pi1=192.168.50.21", "pi2=192.168.50.22")], "ops", None, "pi5", False
    )
    (root / ".piml/id_ed25519.pub").write_text(SSH_PUB + "\n")
    return root


@pytest.fixture
def own_image(image, tmp_path) -> Path:
    """A copy of the test image this test may lose: what the user's download is."""
    path = tmp_path / "raspios.img"
    path.write_bytes(image.read_bytes())
    return path


# --- the output is the input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink", "hardlink"])
@pytest.mark.parametrize("force", [False, True])
def test_output_that_is_the_image_is_refused(own_image, project, spelling, force):
    before = (digest(own_image), os.stat(own_image).st_ino, os.stat(own_image).st_mtime_ns)
    output = {
        "same": own_image,
        "dotted": own_image.parent / "." / ".." / own_image.parent.name / own_image.name,
        "symlink": own_image.parent / "link.img",
        "hardlink": own_image.parent / "hard.img",
    }[spelling]
    if spelling == "symlink":
        output.symlink_to(own_image)
    if spelling == "hardlink":
        os.link(own_image, output)
    result = piml(
        "flash", own_image, "--output", output, "--node", "pi1", "-y", *(["--force"] if force else []), cwd=project
    )
    one_error(result, "--output", "input", "name another file")
    assert (digest(own_image), os.stat(own_image).st_ino, os.stat(own_image).st_mtime_ns) == before
    assert sorted(p.name for p in own_image.parent.iterdir() if "piml-partial" in p.name) == []


def test_all_into_the_images_own_directory_under_its_name(own_image, project):
    """`piml flash images/pi1.img --all --output images/` would write pi1.img over the IMAGE."""
    source = own_image.parent / "pi1.img"
    own_image.rename(source)
    before = digest(source)
    result = piml("flash", source, "--all", "--output", source.parent, cwd=project)
    one_error(result, "pi1.img", "input")
    assert digest(source) == before and not (source.parent / "pi2.img").exists()


# --- an existing output -------------------------------------------------------------------------------------------


def test_an_existing_output_is_kept_unless_force(image, project, tmp_path):
    out = tmp_path / "pi1.img"
    out.write_text("precious\n")
    result = piml("flash", image, "--output", out, "--node", "pi1", "-y", cwd=project)
    one_error(result, f"--output {out}", "already exists", "--force")
    assert out.read_text() == "precious\n"
    result = piml("flash", image, "--output", out, "--node", "pi1", "--force", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "set_hostname pi1" in read_fat_file(out, 4 << 20, "firstrun.sh")


def test_all_refuses_every_existing_file_before_writing_any(image, project, tmp_path):
    out = tmp_path / "images"
    out.mkdir()
    (out / "pi2.img").write_text("precious\n")
    result = piml("flash", image, "--all", "--output", out, cwd=project)
    one_error(result, "pi2.img", "already exists")
    assert sorted(p.name for p in out.iterdir()) == ["pi2.img"] and (out / "pi2.img").read_text() == "precious\n"
    result = piml("flash", image, "--all", "--output", out, "--force", cwd=project)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["pi1.img", "pi2.img"]


def test_something_not_a_plain_file_is_never_replaced(image, project, tmp_path):
    fifo = tmp_path / "pipe.img"
    os.mkfifo(fifo)
    result = piml("flash", image, "--output", fifo, "--node", "pi1", "--force", cwd=project)
    one_error(result, "not a plain file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_force_without_output_is_a_usage_error(image, project):
    one_error(piml("flash", image, "/dev/sdz", "--force", cwd=project), "--force", "-y")


@pytest.mark.parametrize("blank", ["", " "])
def test_blank_output_is_refused(image, project, blank):
    one_error(piml("flash", image, "--output", blank, "--node", "pi1", cwd=project), "--output", "empty")
    assert not (project / "pi1.img").exists() and not (project / " ").exists()


@pytest.mark.parametrize("where", ["/proc/piml-test.img", "/dev/full/x.img", "x" * 300 + ".img"])
def test_an_unwritable_output_is_one_line(image, project, where):
    one_error(piml("flash", image, "--output", where, "--node", "pi1", cwd=project), "--output")


# --- secrets: 0600 from the first byte -----------------------------------------------------------------------------


def test_an_image_with_the_wifi_key_is_0600(image, project, tmp_path):
    (project / "piml.yaml").write_text(WIFI_YAML)
    out = tmp_path / "pi1.img"
    result = piml(
        "flash", image, "--output", out, "--node", "pi1", cwd=project, env={"PIML_WIFI_PASSPHRASE": PASSPHRASE}
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert "Lab Net" in read_fat_file(out, 4 << 20, "firstrun.sh")
    images = tmp_path / "all"
    result = piml("flash", image, "--all", "--output", images, cwd=project, env={"PIML_WIFI_PASSPHRASE": PASSPHRASE})
    assert result.returncode == 0, result.stderr
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in images.iterdir()} == {"pi1.img": 0o600, "pi2.img": 0o600}


def _flash_in_process(monkeypatch, image, project, out, during_write):
    """Run `piml flash IMAGE --output OUT --node pi1` in this process; `during_write(target)` runs at its first byte."""
    from piml.commands import flash
    from piml.flash import writer

    real = writer.write_image

    def watched(stream, target, **kw):
        during_write(target)
        return real(stream, target, **kw)

    monkeypatch.setattr(writer, "write_image", watched)
    monkeypatch.chdir(project)
    flash.run(flash.Options(image=str(image), device=None, node="pi1", yes=True, output=str(out), project=project))


def test_the_wifi_key_is_never_readable_by_others_not_even_while_written(image, project, tmp_path, monkeypatch):
    (project / "piml.yaml").write_text(WIFI_YAML)
    monkeypatch.setenv("PIML_WIFI_PASSPHRASE", PASSPHRASE)
    modes = []
    old = os.umask(0)  # a permissive umask must not widen it either
    try:
        _flash_in_process(
            monkeypatch,
            image,
            project,
            tmp_path / "pi1.img",
            lambda target: modes.append(stat.S_IMODE(os.stat(target.path).st_mode)),
        )
    finally:
        os.umask(old)
    assert modes == [0o600]
    assert stat.S_IMODE(os.stat(tmp_path / "pi1.img").st_mode) == 0o600


def test_without_a_secret_the_image_is_an_ordinary_file(image, project, tmp_path, monkeypatch):
    modes = []
    _flash_in_process(
        monkeypatch,
        image,
        project,
        tmp_path / "pi1.img",
        lambda target: modes.append(stat.S_IMODE(os.stat(target.path).st_mode)),
    )
    assert modes == [0o644 & ~_umask()]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_a_file_that_appears_while_writing_is_not_replaced(image, project, tmp_path, monkeypatch):
    out = tmp_path / "pi1.img"
    with pytest.raises(InputError, match="appeared while"):
        _flash_in_process(monkeypatch, image, project, out, lambda target: out.write_text("someone else's\n"))
    assert out.read_text() == "someone else's\n"
    assert [p.name for p in tmp_path.iterdir() if "piml-partial" in p.name] == []
