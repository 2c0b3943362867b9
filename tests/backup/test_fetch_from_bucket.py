"""`piml backup --scheduled` with backup.s3_uri: the archives the scheduled program uploaded come back from the
bucket to this machine, with no cluster at all (MLflow's board may be gone), each checked against its .sha256;
a damaged one is refused and nothing half-written stays. moto's S3 server with its signature checks on stands in
for the user's store (tests/services.py)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time

import yaml

from piml.backup import archive
from tests.backup.test_scheduled_program import archives, run, store
from tests.queue.helpers import assert_no_secrets
from tests.render.test_render import HERE


def project(tmp_path, s3_server):
    """A project `lab` whose piml.yaml sends scheduled backups to the bucket; its keys in .piml/secrets.yaml."""
    lab = tmp_path / "lab"
    (lab / "inventory").mkdir(parents=True)
    shutil.copy(HERE / "scenarios" / "single-node.yml", lab / "inventory" / "hosts.yml")
    settings = {"schedule": "30 3 * * *", "s3_uri": "s3://pi-backups/boards", "s3_endpoint_url": s3_server.url}
    (lab / "piml.yaml").write_text(yaml.safe_dump({"backup": settings}))
    (lab / ".piml").mkdir(mode=0o700)
    keys = {"backup_s3_access_key": s3_server.access_key, "backup_s3_secret_key": s3_server.secret_key}
    (lab / ".piml" / "secrets.yaml").write_text(yaml.safe_dump(keys))
    return lab


def upload(tmp_path, s3_server, times: int) -> list[str]:
    """What the CronJob's runs leave in the bucket: the real program, run `times` times."""
    source, backups = store(tmp_path), tmp_path / "board"
    backups.mkdir()
    extra = ("--s3-uri=s3://pi-backups/boards", f"--s3-endpoint={s3_server.url}")
    keys = {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.secret_key}
    for i in range(times):
        result = run(tmp_path, source, backups, keep=5, extra=extra, env=keys)
        assert result.returncode == 0, result.stderr
        if i + 1 < times:
            time.sleep(1.05)  # an archive's name carries the second
    return archives(backups)


def test_the_archives_come_back_from_the_bucket_checked_and_private(piml, tmp_path, s3_server, monkeypatch):
    for variable in ("PIML_BACKUP_S3_ACCESS_KEY", "PIML_BACKUP_S3_SECRET_KEY"):
        monkeypatch.delenv(variable, raising=False)
    made = upload(tmp_path, s3_server, 2)
    lab = project(tmp_path, s3_server)
    out = piml("backup", "--scheduled", cwd=lab)  # no kubeconfig, no node: the bucket is enough
    assert out.returncode == 0, out.stderr
    assert f"{made[0]}: copied from s3://pi-backups/boards" in out.stdout
    assert "scheduled backups: 2 copied to backups, 0 already there" in out.stdout
    assert_no_secrets(out.stdout + out.stderr)
    got = lab / "backups"
    assert sorted(os.listdir(got)) == sorted([*made, *(n + ".sha256" for n in made)])
    assert all(stat.S_IMODE((got / n).stat().st_mode) == 0o600 for n in os.listdir(got))
    assert all((got / n).read_bytes() == (tmp_path / "board" / n).read_bytes() for n in made)
    check = subprocess.run(["sha256sum", "-c", made[-1] + ".sha256"], cwd=got, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout
    (tmp_path / "read").mkdir()
    with archive.opened(got / made[-1], tmp_path / "read") as (manifest, parts):  # what `piml restore` takes
        assert set(parts) == {"mlflow"} and manifest.project == "lab"

    again = piml("backup", "--scheduled", "--json", cwd=lab)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"copied": [], "already_here": made, "ok": True}


def test_a_damaged_archive_is_refused_and_nothing_half_written_stays(piml, tmp_path, s3_server):
    [made] = upload(tmp_path, s3_server, 1)
    board = tmp_path / "board" / made
    board.write_bytes(board.read_bytes()[:-100] + bytes(100))  # a damaged copy, uploaded under its old .sha256
    script = (
        "import boto3, sys\n"
        "s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id=sys.argv[2],"
        " aws_secret_access_key=sys.argv[3])\n"
        "s3.upload_file(sys.argv[4], 'pi-backups', 'boards/' + sys.argv[5])\n"
    )
    args = [s3_server.url, s3_server.access_key, s3_server.secret_key, str(board), made]
    put = subprocess.run([str(s3_server.python), "-c", script, *args], capture_output=True, text=True, timeout=60)
    assert put.returncode == 0, put.stderr
    lab = project(tmp_path, s3_server)
    out = piml("backup", "--scheduled", cwd=lab)
    assert out.returncode == 1
    [line] = out.stderr.strip().splitlines()
    assert f"s3://pi-backups/boards/{made}: the copy does not match its .sha256" in line, line
    assert os.listdir(lab / "backups") == []


def test_keys_missing_or_refused_are_one_line(piml, tmp_path, s3_server, monkeypatch):
    upload(tmp_path, s3_server, 1)
    lab = project(tmp_path, s3_server)
    (lab / ".piml" / "secrets.yaml").write_text("")
    for variable in ("PIML_BACKUP_S3_ACCESS_KEY", "PIML_BACKUP_S3_SECRET_KEY"):
        monkeypatch.delenv(variable, raising=False)
    out = piml("backup", "--scheduled", cwd=lab)
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert "backup.s3_uri is set, but backup_s3_access_key and backup_s3_secret_key are not given" in line
    monkeypatch.setenv("PIML_BACKUP_S3_ACCESS_KEY", s3_server.access_key)
    monkeypatch.setenv("PIML_BACKUP_S3_SECRET_KEY", "not-the-key-at-all")
    out = piml("backup", "--scheduled", cwd=lab)
    assert out.returncode == 1
    [line] = out.stderr.strip().splitlines()
    assert "HTTP 403 SignatureDoesNotMatch" in line and "not-the-key-at-all" not in out.stdout + out.stderr


def test_a_store_that_never_answers_ends_within_the_bound(piml, tmp_path):
    """A NAS half up (it accepts the connection, never answers): one line naming it, within --timeout."""
    import socket
    from types import SimpleNamespace

    with socket.create_server(("127.0.0.1", 0)) as silent:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        lab = project(tmp_path, SimpleNamespace(url=url, access_key="GK0000", secret_key="never-used-0000"))
        started = time.monotonic()
        out = piml("backup", "--scheduled", "--timeout", "10", cwd=lab, timeout=60)
        took = time.monotonic() - started
    assert out.returncode == 1 and took < 30, took
    [line] = out.stderr.strip().splitlines()
    assert f"{url} did not answer" in line and "never-used-0000" not in line, line
