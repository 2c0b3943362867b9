"""The scheduled backup's program (piml/backup/scheduled.py) run as the CronJob's pod runs it, here with this
machine's python3 on directories: what it leaves is an archive `piml restore` reads, private, the newest N kept;
a run that fails keeps what was there. (tests/contract/test_backup_job.py runs it in the pod as rendered, on a
real MLflow server's volume.)"""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from piml.backup import archive
from piml.backup.onnode import SNAPSHOT
from piml.render.source import PACKAGE

PROGRAM = PACKAGE / "backup" / "scheduled.py"


def run(tmp_path: Path, source: Path, backups: Path, keep: int = 2) -> subprocess.CompletedProcess:
    snapshot = tmp_path / "snapshot.py"
    if not snapshot.exists():
        snapshot.write_text(SNAPSHOT)
    args = [str(snapshot), str(source), str(backups), f"--keep={keep}", "--project=lab"]
    args += ["--mlflow-version=3.18.0", "--piml-version=0.1.0"]
    return subprocess.run(
        [sys.executable, str(PROGRAM), *args], capture_output=True, text=True, timeout=120, env={"NODE_NAME": "pi3"}
    )


def store(tmp_path: Path) -> Path:
    source = tmp_path / "mlflow"
    (source / "artifacts" / "1").mkdir(parents=True)
    (source / "artifacts" / "1" / "note.txt").write_text("piml")
    db = sqlite3.connect(source / "mlflow.db")
    db.execute("CREATE TABLE runs (id TEXT)")
    db.execute("INSERT INTO runs VALUES ('r1')")
    db.commit()
    db.close()
    return source


def archives(backups: Path) -> list[str]:
    return sorted(n for n in os.listdir(backups) if n.endswith(".tar.gz"))


def test_archives_are_restorable_private_and_only_the_newest_are_kept(tmp_path):
    source, backups = store(tmp_path), tmp_path / "backups"
    backups.mkdir()
    os.umask(0o022)
    made = []
    for _ in range(3):
        result = run(tmp_path, source, backups)
        assert result.returncode == 0, result.stderr
        made.append(archives(backups)[-1])
        time.sleep(1.05)  # the archive's name carries the second
    assert len(set(made)) == 3
    assert archives(backups) == made[1:]  # the oldest went, with its .sha256
    assert sorted(os.listdir(backups)) == sorted([*made[1:], *(n + ".sha256" for n in made[1:])])
    assert "deleted " + made[0] in result.stdout
    for name in os.listdir(backups):
        assert stat.S_IMODE((backups / name).stat().st_mode) == 0o600, name
    check = subprocess.run(["sha256sum", "-c", made[-1] + ".sha256"], cwd=backups, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout

    with archive.opened(backups / made[-1], tmp_path) as (manifest, parts):  # as `piml restore` reads it
        assert set(parts) == {"mlflow"} and manifest.project == "lab"
        assert manifest.versions["mlflow"] == "3.18.0" and manifest.parts["mlflow"]["node"] == "pi3"
        assert {"project", "k3s datastore", "queue"} <= set(manifest.left_out)
        with tarfile.open(parts["mlflow"]) as tar:
            tar.extractall(tmp_path / "out", filter="data")
    assert (tmp_path / "out" / "artifacts" / "1" / "note.txt").read_text() == "piml"
    assert sqlite3.connect(tmp_path / "out" / "mlflow.db").execute("SELECT id FROM runs").fetchall() == [("r1",)]


def test_a_failed_run_keeps_the_archives_there_and_says_why(tmp_path):
    source, backups = store(tmp_path), tmp_path / "backups"
    backups.mkdir()
    assert run(tmp_path, source, backups, keep=1).returncode == 0
    before = sorted(os.listdir(backups))
    time.sleep(1.05)
    result = run(tmp_path, tmp_path / "no-such-volume", backups, keep=1)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"piml scheduled backup: failed, nothing kept from this run: copying {tmp_path / 'no-such-volume'}: "
        f"no directory {tmp_path / 'no-such-volume'}"
    ]
    assert sorted(os.listdir(backups)) == before  # nothing half-written, nothing pruned


def test_what_a_killed_run_left_is_cleared_by_the_next(tmp_path):
    source, backups = store(tmp_path), tmp_path / "backups"
    backups.mkdir()
    (backups / ".piml-backup-lab-20261201T000000Z.tar.gz.partial").write_bytes(b"torn")
    (backups / ".piml-scheduled-abc").mkdir()
    (backups / ".piml-scheduled-abc" / "mlflow.tar").write_bytes(b"torn")
    assert run(tmp_path, source, backups).returncode == 0
    assert not [n for n in os.listdir(backups) if n.startswith(".")]
