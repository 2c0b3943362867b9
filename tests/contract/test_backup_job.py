"""The scheduled backup (backup.schedule) as rendered: the CronJob's pod, run as MLflow's image runs it, on the
volume a real MLflow server is writing. What it leaves is read by `piml restore`'s reader and holds the runs,
metrics and artifacts the server had; only the newest `keep` archives stay, on the volume and in the user's S3
bucket (backup.s3_uri) off the cluster, reached by its name with the keys of the rendered Secret."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import tarfile
import time

import pytest

from piml.backup import archive
from tests.contract import images
from tests.contract.platform import start_platform
from tests.contract.test_mlflow import _client_pod
from tests.services import S3Server

pytestmark = pytest.mark.contract


def test_the_cronjobs_pod_backs_up_a_live_mlflow(pod_network, tmp_path, monkeypatch):
    to_s3 = {"s3_uri": "s3://pi-backups/lab", "s3_endpoint_url": "http://nas.lan:3900"}
    settings = {"backup": {"schedule": "*/30 * * * *", "keep": 2, **to_s3}}
    for variable in ("PIML_BACKUP_S3_ACCESS_KEY", "PIML_BACKUP_S3_SECRET_KEY"):  # replaced below by the store's own
        monkeypatch.setenv(variable, "not-yet")
    platform = start_platform("pi5-3x8gb", settings, tmp_path, pod_network)
    try:
        store, access, secret = platform.s3_outside()
        # The keys the store gave, where the user's keys from .piml/secrets.yaml are in the rendered Secret.
        platform.kubelet.find("Secret", "mlflow-backup", platform.ns)["stringData"].update(
            {"s3-access-key": access, "s3-secret-key": secret}
        )
        mlflow = platform.deployment("mlflow")
        platform.kubelet.wait_probe(mlflow.container("mlflow"), "readinessProbe", budget=120)
        client = _client_pod(platform, "backup-client")
        script = (
            "import mlflow\n"
            "mlflow.set_experiment('backed-up')\n"
            "with mlflow.start_run() as run:\n"
            "    mlflow.log_metric('loss', 0.25)\n"
            "    mlflow.log_text('piml backup', 'note.txt')\n"
            "print(run.info.run_id)\n"
        )
        logged = platform.kubelet.exec(client, ["python", "-c", script], timeout=180)
        assert logged.returncode == 0, logged.stderr[-3000:]
        run_id = logged.stdout.strip().splitlines()[-1]

        cron = platform.kubelet.find("CronJob", "mlflow-backup", platform.ns)
        assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["startingDeadlineSeconds"] > 0
        template = cron["spec"]["jobTemplate"]["spec"]["template"]
        assert template["spec"]["nodeSelector"] == mlflow.spec["nodeSelector"]  # its volume is on that node
        made = []
        for i in range(3):  # while the server runs and holds its store open
            job = platform.kubelet.start(f"mlflow-backup-{i}", platform.ns, template["metadata"]["labels"],
                                         template["spec"])  # fmt: skip
            backup = job.container("backup")
            assert backup.proc.wait(timeout=300) == 0, backup.tail()
            made.append(backup.tail().split("piml scheduled backup: /backups/", 1)[1].split(" ", 1)[0])
            time.sleep(1.05)  # an archive's name carries the second
        backups = job.mounts["backups"]
        kept = sorted(p.name for p in backups.glob("piml-backup-*.tar.gz"))
        assert kept == made[1:], (kept, made)
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in backups.iterdir())
        check = subprocess.run(["sha256sum", "-c", f"{kept[-1]}.sha256"], cwd=backups, capture_output=True, timeout=60)
        assert check.returncode == 0, check.stdout
        assert f"uploaded {made[-1]} to s3://pi-backups/lab" in backup.tail()
        bucket = S3Server(
            platform.forward(store, 3900).url, "pi-backups", access, secret, images.s3_standin().bin / "python"
        )
        (tmp_path / "bucket").mkdir()
        assert sorted(bucket.objects(download_to=tmp_path / "bucket")) == [
            f"lab/{n}{e}" for n in kept for e in ("", ".sha256")
        ]
        for name in kept:  # off the board, byte for byte
            assert (tmp_path / "bucket" / f"lab__{name}").read_bytes() == (backups / name).read_bytes()

        (tmp_path / "read").mkdir()
        with archive.opened(backups / kept[-1], tmp_path / "read") as (manifest, parts):  # as `piml restore` does
            assert manifest.versions["mlflow"] == platform.cluster.config.mlflow.version
            assert manifest.parts["mlflow"]["node"] == job.node
            with tarfile.open(parts["mlflow"]) as tar:
                tar.extractall(tmp_path / "out", filter="data")
        db = sqlite3.connect(tmp_path / "out" / "mlflow.db")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert db.execute(
                "SELECT value FROM metrics WHERE run_uuid = ? AND key = 'loss'", (run_id,)
            ).fetchall() == [(0.25,)]
        finally:
            db.close()
        notes = list((tmp_path / "out" / "artifacts").rglob("note.txt"))
        assert [n.read_text() for n in notes] == ["piml backup"]
        assert (tmp_path / "out" / "basic_auth.db").is_file()  # the users and permissions are in it too
    finally:
        platform.close()


def test_the_cronjobs_pod_dumps_mlflows_postgres_into_the_archive(pod_network, tmp_path):
    """MLflow on the PostgreSQL piml deploys: the pod's init container runs pg_dump as rendered (the postgres
    image's program, reaching `mlflow-postgres` by its Service name with the password of the rendered Secret), and
    the archive holds the dump beside the volume. The dump, loaded into a fresh PostgreSQL with psql, has the run."""
    from tests.services import postgres_on

    settings = {"mlflow": {"backend": "postgresql"}, "backup": {"schedule": "@daily", "keep": 2}}
    platform = start_platform("pi5-3x8gb", settings, tmp_path, pod_network)
    try:
        postgres = platform.deployment("mlflow-postgres")
        platform.kubelet.wait_probe(postgres.container(), "readinessProbe", budget=120)
        mlflow = platform.deployment("mlflow")
        platform.kubelet.wait_probe(mlflow.container("mlflow"), "readinessProbe", budget=180)
        client = _client_pod(platform, "backup-client")
        script = (
            "import mlflow\n"
            "mlflow.set_experiment('dumped')\n"
            "with mlflow.start_run() as run:\n"
            "    mlflow.log_metric('loss', 0.125)\n"
            "print(run.info.run_id)\n"
        )
        logged = platform.kubelet.exec(client, ["python", "-c", script], timeout=180)
        assert logged.returncode == 0, logged.stderr[-3000:]
        run_id = logged.stdout.strip().splitlines()[-1]

        template = platform.kubelet.find("CronJob", "mlflow-backup", platform.ns)["spec"]["jobTemplate"]["spec"]
        job = platform.kubelet.start("mlflow-backup-pg", platform.ns, template["template"]["metadata"]["labels"],
                                     template["template"]["spec"])  # fmt: skip
        assert job.init_results == [("dump", 0)]
        backup = job.container("backup")
        assert backup.proc.wait(timeout=300) == 0, backup.tail()
        (made,) = sorted(job.mounts["backups"].glob("piml-backup-*.tar.gz"))
        (tmp_path / "read").mkdir()
        with archive.opened(made, tmp_path / "read") as (manifest, parts):  # as `piml restore` reads it
            assert set(parts) == {"mlflow", "mlflow-db"}
            assert manifest.parts["mlflow-db"]["server"]
            with archive.member(parts["mlflow-db"], "mlflow.sql", made.name) as dumped:
                (tmp_path / "mlflow.sql").write_bytes(dumped.read())
        with postgres_on() as fresh:
            loaded = subprocess.run(
                [str(fresh.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", f"--host={fresh.socket_dir}",
                 "--username=mlflow", "--dbname=mlflow", "--single-transaction", f"--file={tmp_path / 'mlflow.sql'}"],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert loaded.returncode == 0, loaded.stderr[-2000:]
            with fresh.connect("mlflow") as conn:
                found = conn.execute("SELECT value FROM metrics WHERE run_uuid = %s AND key = 'loss'", (run_id,))
                assert found.fetchall() == [(0.125,)]
    finally:
        platform.close()
