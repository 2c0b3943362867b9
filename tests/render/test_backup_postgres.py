"""Scheduled backups of MLflow on the PostgreSQL piml deploys: the CronJob's pod dumps the database in an init
container, with the image's pg_dump and the password only by secretKeyRef, and PostgreSQL's NetworkPolicy lets
that pod in. An external database (mlflow.backend_uri) is refused in one line. (tests/contract/test_backup_job.py
runs the rendered pod; tests/backup/test_scheduled_program.py the program with a real dump.)"""

from __future__ import annotations

from piml.plan import make_plan
from piml.render import images, render_platform
from piml.secrets import load_or_create
from tests.render.test_render import HERE, cluster_for

SETTINGS = {"mlflow": {"backend": "postgresql"}, "backup": {"schedule": "30 3 * * *"}}


def _objects(tmp_path, settings):
    cluster = cluster_for("single-node", tmp_path, settings)
    secrets = load_or_create(tmp_path / ".piml")
    objects = [o for r in render_platform(cluster, make_plan(cluster), secrets) for o in r.objects]
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}, secrets


def test_the_dump_runs_first_in_the_postgres_image_and_lands_in_the_archive(tmp_path):
    objects, secrets = _objects(tmp_path, SETTINGS)
    pod = objects["CronJob", "mlflow-backup"]["spec"]["jobTemplate"]["spec"]["template"]
    (dump,) = pod["spec"]["initContainers"]
    assert dump["image"] == images.POSTGRES
    assert "pg_dump --host=mlflow-postgres --username=mlflow --dbname=mlflow" in dump["command"][-1]
    assert {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "mlflow", "key": "postgres-password"}}} in (
        dump["env"]
    )
    (backup,) = pod["spec"]["containers"]
    assert "--database-dump=/dump/mlflow.sql" in backup["args"]
    assert {"name": "dump", "mountPath": "/dump"} in dump["volumeMounts"] and {
        "name": "dump",
        "mountPath": "/dump",
    } in backup["volumeMounts"]
    assert {"name": "dump", "emptyDir": {}} in pod["spec"]["volumes"]
    rendered = str(objects["CronJob", "mlflow-backup"])
    assert secrets["postgres_password"] not in rendered

    policy = objects["NetworkPolicy", "mlflow-postgres"]["spec"]["ingress"][0]["from"]
    allowed = [rule["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for rule in policy]
    assert allowed == ["mlflow", "mlflow-backup"]
    assert pod["metadata"]["labels"]["app.kubernetes.io/name"] == "mlflow-backup"


def test_without_a_schedule_only_mlflow_reaches_postgres(tmp_path):
    objects, _ = _objects(tmp_path, {"mlflow": {"backend": "postgresql"}})
    assert ("CronJob", "mlflow-backup") not in objects
    policy = objects["NetworkPolicy", "mlflow-postgres"]["spec"]["ingress"][0]["from"]
    assert [rule["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for rule in policy] == ["mlflow"]


def test_a_schedule_with_an_external_database_is_one_line(piml, tmp_path):
    (tmp_path / "piml.yaml").write_text(
        "mlflow:\n  backend: postgresql\n  backend_uri: postgresql://mlflow@db.lan/mlflow\nbackup:\n"
        "  schedule: '30 3 * * *'\n"
    )
    out = piml("render", "-i", str(HERE / "scenarios" / "single-node.yml"), cwd=tmp_path)
    assert out.returncode == 2 and not out.stdout
    (line,) = out.stderr.strip().splitlines()
    assert line.endswith(
        "piml.yaml:5: 'backup.schedule' backs up the MLflow piml deploys, and its store is an external PostgreSQL; "
        "remove backup.schedule (back the external database up where it runs)"
    ), line
