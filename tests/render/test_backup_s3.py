"""Scheduled backups into the user's own S3 bucket (backup.s3_uri): the CronJob's pod gets the bucket in its args
and the keys only by secretKeyRef, from a Secret of its own; settings that cannot work are one line before
anything. (tests/backup/test_scheduled_program.py uploads to an S3 server; tests/contract/test_backup_job.py runs
the rendered pod.)"""

from __future__ import annotations

import pytest
import yaml

from piml.errors import InputError
from piml.plan import make_plan
from piml.render import render_platform
from piml.secrets import load_or_create
from tests.render.test_render import HERE, cluster_for

KEY, SECRET = "GKbackupkey0000", "backup-s3-secret-0000"
TO_S3 = {
    "backup": {
        "schedule": "30 3 * * *",
        "s3_uri": "s3://backups/piml/lab",
        "s3_endpoint_url": "http://nas.lan:3900",
        "s3_region": "garage",
    }
}
VARIABLES = ("PIML_BACKUP_S3_ACCESS_KEY", "PIML_BACKUP_S3_SECRET_KEY")


@pytest.fixture
def keys_file(tmp_path, monkeypatch):
    """The keys in .piml/secrets.yaml, as the README says to add them; none in the environment."""
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    (tmp_path / ".piml").mkdir(mode=0o700)
    (tmp_path / ".piml" / "secrets.yaml").write_text(
        yaml.safe_dump({"backup_s3_access_key": KEY, "backup_s3_secret_key": SECRET})
    )
    return tmp_path / ".piml"


def _backup_objects(tmp_path, settings, secrets):
    cluster = cluster_for("single-node", tmp_path, settings)
    objects = [o for r in render_platform(cluster, make_plan(cluster), secrets) for o in r.objects]
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def _container(objects):
    cron = objects["CronJob", "mlflow-backup"]
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]


def test_the_bucket_in_the_args_and_the_keys_only_in_a_secret(tmp_path, keys_file):
    objects = _backup_objects(tmp_path, TO_S3, load_or_create(keys_file))
    container = _container(objects)
    assert container["args"][-3:] == [
        "--s3-uri=s3://backups/piml/lab",
        "--s3-endpoint=http://nas.lan:3900",
        "--s3-region=garage",
    ]
    env = {e["name"]: e.get("valueFrom") for e in container["env"]}
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "mlflow-backup", "key": "s3-access-key"}}
    assert env["AWS_SECRET_ACCESS_KEY"] == {"secretKeyRef": {"name": "mlflow-backup", "key": "s3-secret-key"}}
    secret = objects["Secret", "mlflow-backup"]
    assert secret["stringData"] == {"s3-access-key": KEY, "s3-secret-key": SECRET}
    assert secret["metadata"]["labels"]["app.kubernetes.io/name"] == "mlflow-backup"
    assert {"scheduled.py", "snapshot.py", "s3store.py"} == set(objects["ConfigMap", "mlflow-backup"]["data"])
    rest = [o for k, o in objects.items() if k != ("Secret", "mlflow-backup")]
    assert SECRET not in yaml.safe_dump_all(rest) and KEY not in yaml.safe_dump_all(rest)


def test_aws_needs_no_endpoint_and_no_region(tmp_path, keys_file):
    settings = {"backup": {"schedule": "30 3 * * *", "s3_uri": "s3://backups"}}
    args = _container(_backup_objects(tmp_path, settings, load_or_create(keys_file)))["args"]
    assert args[-1] == "--s3-uri=s3://backups" and not [a for a in args if a.startswith(("--s3-endpoint", "--s3-r"))]


def test_without_s3_there_is_no_secret_and_no_keys(tmp_path, keys_file):
    objects = _backup_objects(tmp_path, {"backup": {"schedule": "30 3 * * *"}}, load_or_create(keys_file))
    assert ("Secret", "mlflow-backup") not in objects
    container = _container(objects)
    assert not [a for a in container["args"] if a.startswith("--s3")]
    assert "AWS_ACCESS_KEY_ID" not in {e["name"] for e in container["env"]}


def test_the_environment_overrides_the_secrets_file(tmp_path, keys_file, monkeypatch):
    monkeypatch.setenv("PIML_BACKUP_S3_SECRET_KEY", "from-the-environment")
    objects = _backup_objects(tmp_path, TO_S3, load_or_create(keys_file))
    assert objects["Secret", "mlflow-backup"]["stringData"]["s3-secret-key"] == "from-the-environment"
    assert "from-the-environment" not in (keys_file / "secrets.yaml").read_text()  # used, never stored


def test_missing_keys_say_where_to_put_them(tmp_path, monkeypatch):
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    with pytest.raises(InputError) as info:
        _backup_objects(tmp_path, TO_S3, load_or_create(tmp_path / ".piml"))
    text = str(info.value)
    assert "backup.s3_uri is set, but backup_s3_access_key and backup_s3_secret_key are not given" in text
    assert "$PIML_BACKUP_S3_ACCESS_KEY" in text and "secrets.yaml" in text and "\n" not in text
    _backup_objects(tmp_path, TO_S3, None)  # without secret values (piml render) there is nothing to miss


def test_piml_render_never_prints_the_keys(piml, tmp_path, monkeypatch):
    monkeypatch.setenv("PIML_BACKUP_S3_ACCESS_KEY", KEY)
    monkeypatch.setenv("PIML_BACKUP_S3_SECRET_KEY", SECRET)
    (tmp_path / "piml.yaml").write_text(yaml.safe_dump(TO_S3))
    out = piml("render", "-i", str(HERE / "scenarios" / "single-node.yml"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "--s3-uri=s3://backups/piml/lab" in out.stdout
    assert KEY not in out.stdout + out.stderr and SECRET not in out.stdout + out.stderr


@pytest.mark.parametrize(
    ("backup", "said"),
    [
        (
            "  schedule: '30 3 * * *'\n  s3_uri: backups/piml\n",
            "piml.yaml:3: 'backup.s3_uri' is not an s3://BUCKET[/PREFIX] URI (a prefix of letters, digits, '.', '_', "
            "'-', '/'); write it like s3://backups/piml/lab",
        ),
        (
            "  schedule: '30 3 * * *'\n  s3_uri: s3://backups/my lab\n",
            "piml.yaml:3: 'backup.s3_uri' is not an s3://BUCKET[/PREFIX] URI (a prefix of letters, digits, '.', '_', "
            "'-', '/'); write it like s3://backups/piml/lab",
        ),
        (
            "  s3_uri: s3://backups\n",
            "piml.yaml:2: 'backup.s3_uri' is where scheduled archives go, and backup.schedule is not set; "
            "set schedule (e.g. '30 3 * * *'), or remove s3_uri",
        ),
        (
            "  schedule: '30 3 * * *'\n  s3_endpoint_url: http://nas.lan:3900\n",
            "piml.yaml:3: 'backup.s3_endpoint_url' is set but no bucket is named; add s3_uri: s3://BUCKET[/PREFIX]",
        ),
        (
            "  schedule: '30 3 * * *'\n  s3_uri: s3://backups\n  s3_endpoint_url: http://GK1:pw@nas.lan:3900\n",
            "piml.yaml:4: 'backup.s3_endpoint_url' has credentials in it; remove them (the keys go in "
            ".piml/secrets.yaml as backup_s3_access_key and backup_s3_secret_key)",
        ),
    ],
)
def test_settings_that_cannot_work_are_one_line(piml, tmp_path, backup, said):
    (tmp_path / "piml.yaml").write_text("backup:\n" + backup)
    out = piml("render", "-i", str(HERE / "scenarios" / "single-node.yml"), cwd=tmp_path)
    assert out.returncode == 2 and not out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(said), lines
    assert "pw@" not in out.stderr
