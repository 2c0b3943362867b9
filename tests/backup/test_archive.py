"""The backup archive on its own: made 0600 with its checksum, read back whole, and every kind of damage refused
with one line (exit 2 through the CLI) before anything would change. The node programs (piml/backup/onnode.py)
run here with this machine's python3 on a temporary directory, as they run on a node as root."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from piml.backup import archive
from piml.backup.onnode import put_back_command, snapshot_command
from piml.errors import InputError
from tests.conftest import run_piml
from tests.fuzzing import examples


def make(tmp_path: Path, parts: dict[str, bytes] | None = None) -> Path:
    parts = parts if parts is not None else {"project": b"p" * 1000, "mlflow": os.urandom(5000)}
    files = {}
    for name, data in parts.items():
        files[name] = tmp_path / f"src-{name}.tar"
        files[name].write_bytes(data)
    manifest = archive.Manifest("lab", "2026-12-02T21:00:00+00:00", {"mlflow": "3.18.0", "piml": "0.1.0"})
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return archive.write_archive(out, manifest, files)


def test_archive_is_private_checksummed_and_reads_back(tmp_path):
    made = make(tmp_path, {"project": b"inventory", "mlflow": b"volume bytes"})
    assert made.name == "piml-backup-lab-20261202T210000Z.tar.gz"
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    sidecar = made.with_name(made.name + ".sha256")
    assert sidecar.read_text() == f"{archive.sha256_of(made)}  {made.name}\n"  # `sha256sum -c` reads it
    assert subprocess.run(["sha256sum", "-c", sidecar.name], cwd=made.parent, capture_output=True).returncode == 0
    assert not [p for p in made.parent.iterdir() if p.name.startswith(".")]  # no partial file left
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with archive.opened(made, scratch) as (manifest, parts):
        assert manifest.project == "lab" and manifest.versions["mlflow"] == "3.18.0"
        assert parts["mlflow"].read_bytes() == b"volume bytes"
        assert parts["project"].read_bytes() == b"inventory"


def refusal(path: Path, tmp_path: Path) -> str:
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    with pytest.raises(InputError) as caught:
        with archive.opened(path, scratch):
            pass
    (problem,) = caught.value.problems
    return str(problem)


def test_a_flipped_byte_fails_the_checksum(tmp_path):
    made = make(tmp_path)
    data = bytearray(made.read_bytes())
    data[len(data) // 2] ^= 0x01
    made.write_bytes(bytes(data))
    assert "checksum fails" in refusal(made, tmp_path)


def test_damage_without_the_sha256_file_is_still_found(tmp_path):
    made = make(tmp_path)
    made.with_name(made.name + ".sha256").unlink()  # copied without it
    whole = made.read_bytes()
    for cut in (len(whole) // 2, len(whole) - 10):  # truncated: gzip's end is missing
        made.write_bytes(whole[:cut])
        assert "not a whole piml backup archive" in refusal(made, tmp_path)
    data = bytearray(whole)
    data[len(data) // 2] ^= 0x40  # inside the compressed stream: gzip's CRC or the part's sha256 catches it
    made.write_bytes(bytes(data))
    line = refusal(made, tmp_path)
    assert "not a whole piml backup archive" in line or "fails its checksum" in line


def test_a_part_changed_inside_a_rebuilt_archive_fails_its_sha256(tmp_path):
    made = make(tmp_path, {"mlflow": b"original"})
    made.with_name(made.name + ".sha256").unlink()
    with tarfile.open(made, "r:gz") as tar:
        manifest = tar.extractfile("manifest.json").read()
    with tarfile.open(made, "w:gz") as tar:  # a well-formed archive whose part is not what was backed up
        for name, data in (("manifest.json", manifest), ("mlflow.tar", b"tampered")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert "part mlflow.tar fails its checksum" in refusal(made, tmp_path)


def test_other_files_are_not_backups(tmp_path):
    plain = tmp_path / "notes.tar.gz"
    plain.write_text("hello")
    assert "not a whole piml backup archive" in refusal(plain, tmp_path)
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        tar.add(plain, arcname="notes.txt")
    assert "manifest.json is missing" in refusal(other, tmp_path)
    assert "no such archive" in refusal(tmp_path / "missing.tar.gz", tmp_path)


def test_a_newer_format_is_refused_by_name():
    with pytest.raises(InputError) as caught:
        archive.parse_manifest({"format": "piml-backup/9"}, "a.tar.gz")
    assert "piml-backup/9" in str(caught.value.problems[0])


@settings(max_examples=examples(300), deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
        max_leaves=20,
    )
)
def test_fuzz_any_manifest_is_read_or_refused(data):
    for candidate in (data, {"format": archive.FORMAT, **data} if isinstance(data, dict) else data):
        try:
            manifest = archive.parse_manifest(candidate, "a.tar.gz")
        except InputError as exc:
            assert len(exc.problems) == 1 and "\n" not in str(exc.problems[0])
        else:
            assert isinstance(manifest.parts, dict)


def test_restore_refuses_a_damaged_archive_in_one_line_before_touching_anything(tmp_path):
    made = make(tmp_path)
    made.write_bytes(made.read_bytes()[:-100])
    out = run_piml("init", "--yes", "lab", "--node", "pi1=192.0.2.10:server", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = run_piml("restore", str(made), "--yes", cwd=tmp_path / "lab")
    assert out.returncode == 2, out
    assert out.stderr.count("\n") == 1 and "checksum fails" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


# -- the programs that run on the node --------------------------------------------------------------------


def test_snapshot_copies_a_database_being_written_and_put_back_keeps_the_old(tmp_path):
    volume = tmp_path / "pvc-1_piml_mlflow-data"
    (volume / "artifacts/1/abc").mkdir(parents=True)
    (volume / "artifacts/1/abc/model.pkl").write_bytes(os.urandom(3000))
    db = sqlite3.connect(volume / "mlflow.db", check_same_thread=False)
    db.execute("pragma journal_mode=wal")
    db.execute("create table metrics (step integer)")
    db.commit()
    stop = threading.Event()

    def write() -> None:  # a server writing all the while, its commits in the -wal file
        step = 0
        while not stop.is_set():
            db.execute("insert into metrics values (?)", (step,))
            db.commit()
            step += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        out = subprocess.run(snapshot_command(str(volume)), shell=True, capture_output=True, timeout=60)
    finally:
        stop.set()
        writer.join()
    assert out.returncode == 0, out.stderr
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        names = tar.getnames()
    assert "mlflow.db" in names and "artifacts/1/abc/model.pkl" in names
    assert not [n for n in names if n.endswith(("-wal", "-shm"))]

    target = tmp_path / "restored" / "pvc-2_piml_mlflow-data"
    target.mkdir(parents=True)
    (target / "other.db").write_text("what was there")
    back = subprocess.run(put_back_command(str(target), "20261202T000000Z"), shell=True, input=out.stdout,
                          capture_output=True, timeout=60)  # fmt: skip
    assert back.returncode == 0, back.stderr
    kept = Path(back.stdout.decode().strip())
    assert kept.name == "pvc-2_piml_mlflow-data.before-restore-20261202T000000Z"
    assert (kept / "other.db").read_text() == "what was there"
    copy = sqlite3.connect(target / "mlflow.db")
    steps = [s for (s,) in copy.execute("select step from metrics order by step")]
    assert steps == list(range(len(steps)))  # one instant's state: every commit up to it, none torn
    assert copy.execute("pragma integrity_check").fetchone() == ("ok",)
    assert (target / "artifacts/1/abc/model.pkl").read_bytes() == (volume / "artifacts/1/abc/model.pkl").read_bytes()


def test_put_back_refuses_names_outside_the_directory(tmp_path):
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    target = tmp_path / "vol"
    target.mkdir()
    (target / "keep").write_text("old")
    back = subprocess.run(put_back_command(str(target), "s"), shell=True, input=stream.getvalue(),
                          capture_output=True, timeout=60)  # fmt: skip
    assert back.returncode == 4 and b"outside its directory" in back.stderr
    assert not (tmp_path / "escaped").exists()
    assert (target / "keep").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["vol"]


def test_the_manifest_says_what_is_left_out(tmp_path):
    made = make(tmp_path)
    with tarfile.open(made, "r:gz") as tar:
        first = tar.next()
        assert first.name == "manifest.json"
        data = json.loads(tar.extractfile(first).read())
    assert data["format"] == archive.FORMAT and set(data["parts"]) == {"project", "mlflow"}


def test_backup_without_a_cluster_is_one_line_and_makes_nothing(tmp_path):
    out = run_piml("init", "--yes", "lab", "--node", "pi1=192.0.2.10:server", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    out = run_piml("backup", cwd=tmp_path / "lab")
    assert out.returncode == 2 and "no kubeconfig" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "lab/backups").exists()
