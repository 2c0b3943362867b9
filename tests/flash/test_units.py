"""Disk listing and safety checks on captured lsblk output, downloads from a local server, rpiboot."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from piml.errors import InputError, PimlError
from piml.flash import disks, download, rpiboot

LSBLK = {
    "blockdevices": [
        {
            "name": "nvme0n1",
            "path": "/dev/nvme0n1",
            "type": "disk",
            "size": 512110190592,
            "model": "Samsung SSD 980",
            "vendor": None,
            "tran": "nvme",
            "rm": False,
            "hotplug": False,
            "ro": False,
            "mountpoints": [None],
            "children": [
                {"name": "nvme0n1p1", "path": "/dev/nvme0n1p1", "type": "part", "mountpoints": ["/boot/efi"]},
                {
                    "name": "nvme0n1p2",
                    "path": "/dev/nvme0n1p2",
                    "type": "part",
                    "mountpoints": [None],
                    "children": [
                        {"name": "cryptroot", "path": "/dev/mapper/cryptroot", "type": "crypt", "mountpoints": ["/"]}
                    ],
                },
            ],
        },
        {
            "name": "sda",
            "path": "/dev/sda",
            "type": "disk",
            "size": 31914983424,
            "model": "SD/MMC",
            "vendor": "Generic ",
            "tran": "usb",
            "rm": True,
            "hotplug": True,
            "ro": False,
            "mountpoints": [None],
            "children": [
                {"name": "sda1", "path": "/dev/sda1", "type": "part", "mountpoints": ["/media/me/bootfs"]},
                {"name": "sda2", "path": "/dev/sda2", "type": "part", "mountpoints": [None]},
            ],
        },
        {
            "name": "sdb",
            "path": "/dev/sdb",
            "type": "disk",
            "size": 2000398934016,
            "model": "WDC WD20",
            "vendor": "ATA",
            "tran": "sata",
            "rm": False,
            "hotplug": False,
            "ro": False,
            "mountpoints": [None],
        },
        {
            "name": "mmcblk0",
            "path": "/dev/mmcblk0",
            "type": "disk",
            "size": 15634268160,
            "model": None,
            "tran": None,
            "rm": False,
            "hotplug": False,
            "ro": False,
            "mountpoints": [None],
        },
        {"name": "zram0", "path": "/dev/zram0", "type": "disk", "size": 1000, "mountpoints": ["[SWAP]"]},
        {"name": "loop3", "path": "/dev/loop3", "type": "loop", "size": 0, "mountpoints": [None]},
    ]
}


def by_name():
    return {d.name: d for d in disks.parse_disks(LSBLK, set())}


def test_parse_disks():
    found = by_name()
    assert set(found) == {"nvme0n1", "sda", "sdb", "mmcblk0"}
    assert found["nvme0n1"].system and found["nvme0n1"].mounts == ["/boot/efi", "/"]
    assert found["sda"].removable and found["sda"].transport == "usb" and found["sda"].model == "Generic SD/MMC"
    assert found["mmcblk0"].transport == "mmc" and found["mmcblk0"].removable
    assert not found["sdb"].removable and not found["sdb"].system


def test_safety_checks():
    found = by_name()
    with pytest.raises(InputError, match="running system"):
        disks.check_target(found["nvme0n1"], 1, unmount=True, allow_fixed=True)
    with pytest.raises(InputError, match="mounted partitions .*--unmount"):
        disks.check_target(found["sda"], 1, unmount=False, allow_fixed=False)
    disks.check_target(found["sda"], 1, unmount=True, allow_fixed=False)
    with pytest.raises(InputError, match="fixed disk.*--allow-fixed"):
        disks.check_target(found["sdb"], 1, unmount=False, allow_fixed=False)
    disks.check_target(found["sdb"], 1, unmount=False, allow_fixed=True)
    with pytest.raises(InputError, match="too small"):
        disks.check_target(found["mmcblk0"], 16 << 30, unmount=False, allow_fixed=False)
    found["mmcblk0"].read_only = True
    with pytest.raises(InputError, match="read-only"):
        disks.check_target(found["mmcblk0"], 1, unmount=False, allow_fixed=False)


def test_system_disk_named_through_partitions_and_dm():
    names = {"nvme0n1"}
    assert all(d.system == (d.name == "nvme0n1") for d in disks.parse_disks(LSBLK, names))


@pytest.fixture
def server(tmp_path):
    (tmp_path / "img.img.xz").write_bytes(b"\xfd7zXZ\x00" + b"x" * 5000)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(tmp_path), **k)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", tmp_path
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download_checks_and_caches(server, tmp_path, monkeypatch):
    base, root = server
    monkeypatch.setenv("PIML_CACHE_DIR", str(tmp_path / "cache"))
    sha = hashlib.sha256((root / "img.img.xz").read_bytes()).hexdigest()
    said = []
    path = download.fetch(f"{base}/img.img.xz", sha, said.append)
    assert path.read_bytes() == (root / "img.img.xz").read_bytes() and "downloaded" in said[-1]
    (root / "img.img.xz").unlink()  # the second time it comes from the cache
    assert download.fetch(f"{base}/img.img.xz", sha.upper(), said.append) == path and "cached" in said[-1]
    with pytest.raises(PimlError, match="answered 404"):
        download.fetch(f"{base}/other.img.xz", "b" * 64, said.append)
    (root / "bad.img.xz").write_bytes(b"tampered")
    with pytest.raises(PimlError, match="corrupt download or wrong --sha256"):
        download.fetch(f"{base}/bad.img.xz", "c" * 64, said.append)
    assert not list((tmp_path / "cache").glob("*.part"))


def test_download_needs_sha_and_https():
    with pytest.raises(InputError, match="--sha256"):
        download.fetch("https://example.org/a.img.xz", None)
    with pytest.raises(InputError, match="64 hex"):
        download.fetch("https://example.org/a.img.xz", "abc")
    with pytest.raises(InputError, match="https"):
        download.fetch("http://example.org/a.img.xz", "a" * 64)


class FakeDisk:
    def __init__(self, path, transport="usb", system=False):
        self.path, self.transport, self.system = path, transport, system

    def describe(self):
        return self.path


def test_rpiboot_finds_the_new_usb_disk():
    calls = {"n": 0}

    def lister():
        calls["n"] += 1
        return [FakeDisk("/dev/sda")] + ([FakeDisk("/dev/sdb")] if calls["n"] > 2 else [])

    class Done:
        returncode, stdout, stderr = 0, "", ""

    assert (
        rpiboot.wait_for_cm4(5, lambda s: None, poll=0.01, runner=lambda *a, **k: Done(), lister=lister) == "/dev/sdb"
    )


def test_rpiboot_times_out():
    class Done:
        returncode, stdout, stderr = 0, "", ""

    with pytest.raises(PimlError, match="no new USB disk appeared"):
        rpiboot.wait_for_cm4(0.2, lambda s: None, poll=0.05, runner=lambda *a, **k: Done(), lister=lambda: [])


def test_cli_help_is_fast_and_has_examples():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "piml", "flash", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "piml flash --list" in out.stdout
    assert "piml.flash" not in out.stderr  # flash modules load only when the command runs


def test_flash_from_url_to_output_file(images, tmp_path, monkeypatch):
    import subprocess
    import sys

    from .conftest import compress

    packed = compress(images["plain"].path, "xz")
    sha = hashlib.sha256(packed.read_bytes()).hexdigest()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(packed.parent), **k)

        def log_message(self, *a):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{packed.name}"
        out = tmp_path / "out.img"
        env = {
            "PIML_CACHE_DIR": str(tmp_path / "cache"),
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        }
        result = subprocess.run(
            [sys.executable, "-m", "piml", "flash", url, "--sha256", sha, "--output", out],
            capture_output=True,
            text=True,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == images["plain"].path.read_bytes()
        result = subprocess.run(
            [sys.executable, "-m", "piml", "flash", url, "--sha256", "0" * 64, "--output", out],
            capture_output=True,
            text=True,
            env=env,
        )
        assert result.returncode == 1 and "wrong --sha256" in result.stderr
    finally:
        httpd.shutdown()
        httpd.server_close()
