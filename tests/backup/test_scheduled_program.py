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


def run(
    tmp_path: Path, source: Path, backups: Path, keep: int = 2, extra: tuple[str, ...] = (), env: dict | None = None
) -> subprocess.CompletedProcess:
    snapshot = tmp_path / "snapshot.py"
    if not snapshot.exists():
        snapshot.write_text(SNAPSHOT)
    args = [str(snapshot), str(source), str(backups), f"--keep={keep}", "--project=lab"]
    args += ["--mlflow-version=3.18.0", "--piml-version=0.1.0", *extra]
    return subprocess.run(
        [sys.executable, str(PROGRAM), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"NODE_NAME": "pi3", **(env or {})},
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


# -- to an S3 bucket (backup.s3_uri), on moto's S3 server with its signature checks on (tests/services.py) ----------
def to_bucket(s3_server, uri: str = "s3://pi-backups/lab/nightly", secret: str | None = None):
    keys = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": secret or s3_server.secret_key}
    return (f"--s3-uri={uri}", f"--s3-endpoint={s3_server.url}", "--s3-region=us-east-1"), keys


def test_archives_reach_the_bucket_and_only_the_newest_stay_there(tmp_path, s3_server):
    source, backups = store(tmp_path), tmp_path / "backups"
    backups.mkdir()
    extra, keys = to_bucket(s3_server)
    made = []
    for _ in range(3):
        result = run(tmp_path, source, backups, extra=extra, env=keys)
        assert result.returncode == 0, result.stderr
        made.append(archives(backups)[-1])
        assert f"uploaded {made[-1]} to s3://pi-backups/lab/nightly" in result.stdout
        time.sleep(1.05)
    assert f"deleted {made[0]} from s3://pi-backups/lab/nightly" in result.stdout
    (tmp_path / "got").mkdir()
    there = s3_server.objects(download_to=tmp_path / "got")
    wanted = [f"lab/nightly/{n}{end}" for n in made[1:] for end in ("", ".sha256")]
    assert sorted(there) == sorted(wanted)
    for name in made[1:]:  # byte for byte what the board kept, and its .sha256 checks out
        got = tmp_path / "got" / f"lab__nightly__{name}"
        assert got.read_bytes() == (backups / name).read_bytes()
        assert (tmp_path / "got" / f"lab__nightly__{name}.sha256").read_bytes() == (
            backups / f"{name}.sha256"
        ).read_bytes()
    newest = tmp_path / "got" / made[-1]
    (tmp_path / "got" / f"lab__nightly__{made[-1]}").rename(newest)
    (tmp_path / "read").mkdir()
    with archive.opened(newest, tmp_path / "read") as (manifest, parts):  # what `piml restore` takes
        assert set(parts) == {"mlflow"} and manifest.project == "lab"


def test_an_upload_that_failed_is_made_by_the_next_run(tmp_path, s3_server):
    source, backups = store(tmp_path), tmp_path / "backups"
    backups.mkdir()
    extra, keys = to_bucket(s3_server)
    nobody = ("--s3-uri=s3://pi-backups/lab", "--s3-endpoint=http://127.0.0.1:9", "--s3-region=us-east-1")
    failed = run(tmp_path, source, backups, extra=nobody, env=keys)
    assert failed.returncode == 1
    missed = archives(backups)
    assert len(missed) == 1  # kept on the board
    [line] = failed.stderr.splitlines()
    assert line.startswith(f"piml scheduled backup: kept in {backups}, not in s3://pi-backups/lab: ")
    assert "http://127.0.0.1:9 did not answer" in line
    time.sleep(1.05)
    extra, keys = to_bucket(s3_server, "s3://pi-backups/lab")
    result = run(tmp_path, source, backups, extra=extra, env=keys)
    assert result.returncode == 0, result.stderr
    assert sorted(s3_server.objects()) == sorted(f"lab/{n}{end}" for n in archives(backups) for end in ("", ".sha256"))
    assert f"uploaded {missed[0]}" in result.stdout


def test_keys_the_bucket_refuses_fail_the_run_without_showing_them(tmp_path, s3_server):
    source, backups = store(tmp_path), tmp_path / "backups"
    backups.mkdir()
    extra, keys = to_bucket(s3_server, secret="not-the-secret-key-at-all")
    result = run(tmp_path, source, backups, extra=extra, env=keys)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "HTTP 403 SignatureDoesNotMatch" in line, line
    assert "not-the-secret-key-at-all" not in result.stdout + result.stderr
    assert s3_server.secret_key not in result.stdout + result.stderr
    assert s3_server.objects() == {}
    missing = run(tmp_path, source, backups, extra=extra, env={})
    assert missing.returncode == 2 and "$AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY" in missing.stderr


def test_an_archive_whose_sha256_file_is_damaged_is_uploaded_with_its_digest_taken_anew(tmp_path, s3_server):
    """The upload signs the digest beside the archive (S3 checks the body against it); a damaged .sha256 file is
    not trusted: the archive is read again and the bucket gets the right one."""
    import hashlib

    source, backups = store(tmp_path), tmp_path / "backups"
    backups.mkdir()
    assert run(tmp_path, source, backups).returncode == 0  # not uploaded yet (no --s3-uri)
    [first] = archives(backups)
    (backups / f"{first}.sha256").write_bytes(b"garbage\n")
    time.sleep(1.05)
    extra, keys = to_bucket(s3_server, "s3://pi-backups/lab")
    result = run(tmp_path, source, backups, extra=extra, env=keys)
    assert result.returncode == 0, result.stderr
    (tmp_path / "got").mkdir()
    assert len(s3_server.objects(download_to=tmp_path / "got")) == 4
    digest = hashlib.sha256((backups / first).read_bytes()).hexdigest()
    assert (tmp_path / "got" / f"lab__{first}.sha256").read_text() == f"{digest}  {first}\n"


def real_dump(tmp_path: Path) -> Path:
    """What the CronJob's init container leaves: a real pg_dump, with the rendered flags, of a real PostgreSQL."""
    from tests.services import postgres_on

    dump = tmp_path / "mlflow.sql"
    with postgres_on() as server:
        sql = "CREATE TABLE runs (run_uuid text PRIMARY KEY, name text); INSERT INTO runs VALUES ('r1', 'naïve ✓')"
        made = subprocess.run(
            [str(server.bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", f"--host={server.socket_dir}",
             "--username=mlflow", "--dbname=mlflow", "-c", sql],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        done = subprocess.run(
            [str(server.bindir / "pg_dump"), f"--host={server.socket_dir}", "--username=mlflow", "--dbname=mlflow",
             "--no-owner", "--no-privileges", f"--file={dump}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return dump


def test_the_database_dump_goes_in_as_piml_backup_puts_it(tmp_path):
    from piml.backup import postgres, scheduled, take

    assert (scheduled.DATABASE_PART, scheduled.DUMP) == (take.MLFLOW_DATABASE_PART, take.MLFLOW_DUMP)
    assert scheduled.TRAILER == postgres.TRAILER
    source, backups, dump = store(tmp_path), tmp_path / "backups", real_dump(tmp_path)
    backups.mkdir()
    done = run(tmp_path, source, backups, extra=(f"--database-dump={dump}",))
    assert done.returncode == 0, done.stderr
    (made,) = archives(backups)
    (tmp_path / "read").mkdir()
    with archive.opened(backups / made, tmp_path / "read") as (manifest, parts):
        assert set(parts) == {"mlflow", "mlflow-db"}
        said = manifest.parts["mlflow-db"]
        assert said["server"] and said["server"] == postgres.server_version(dump)
        with archive.member(parts["mlflow-db"], take.MLFLOW_DUMP, made) as dumped:
            assert dumped.read() == dump.read_bytes()

    cut = tmp_path / "cut.sql"
    cut.write_bytes(dump.read_bytes()[:-200])
    failed = run(tmp_path, source, backups, extra=(f"--database-dump={cut}",))
    assert failed.returncode == 1 and "is cut short" in failed.stderr, failed.stderr
    assert archives(backups) == [made]
