"""MLflow's PostgreSQL store out of its pod and back in (piml/backup/postgres.py), by `piml backup`'s and `piml
restore`'s own code, through the REAL API server's exec (WebSocket v5, stdin closed with a CLOSE frame).

Real: the API server, the scheduler and the Deployment controller (the rendered platform with
`mlflow.backend: postgresql` deployed on them); PostgreSQL, pg_dump and psql (Debian's newest, as the image
runs them: trusted local connections, the image's user and database); MLflow at the pinned version, which writes
its schema and its data (experiments, runs, params, metrics, tags, registered models, versions, aliases) as its
server does, through SQLAlchemy and psycopg 3.

The one stand-in is where the command runs: the kubelet stand-in's streaming server (the kubelet's own
code, tests/controlplane/modules/kubelet-streams) runs it as a process here, with PGHOST naming the test server's
socket directory where the pod has the image's default, /var/run/postgresql."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
import yaml

from piml.backup import archive, postgres
from piml.backup.take import MLFLOW_DATABASE_PART, MLFLOW_DUMP, take_mlflow_database
from piml.errors import PimlError
from piml.kube.deploy import deploy
from piml.kube.podexec import ready_pod
from tests.platform.conftest import FAST
from tests.services import postgres_on

SETTINGS = {"mlflow": {"backend": "postgresql"}}

# MLflow writes as its server does (SqlAlchemyStore: alembic migrations, then the rows); a process of its own that
# ends, so no connection of it is left open (a stopped MLflow, as restore has it)
WRITE = """
import sys
from mlflow import MlflowClient
client = MlflowClient(tracking_uri=sys.argv[1], registry_uri=sys.argv[1])
name = sys.argv[2]
experiment = client.create_experiment(name, artifact_location="file:///mlflow/artifacts")
run = client.create_run(experiment, tags={"team": "lab", "note": "naïve ünïcode ✓"})
client.log_param(run.info.run_id, "alpha", "0.5")
for step in range(5):
    client.log_metric(run.info.run_id, "rmse", 1.0 / (step + 1), step=step)
client.set_terminated(run.info.run_id)
model = "iris-" + name
client.create_registered_model(model)
version = client.create_model_version(model, source="file:///mlflow/artifacts/model", run_id=run.info.run_id)
client.set_registered_model_alias(model, "champion", version.version)
"""
READ = """
import json, sys
from mlflow import MlflowClient
client = MlflowClient(tracking_uri=sys.argv[1], registry_uri=sys.argv[1])
runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
print(json.dumps({
    "runs": sorted((r.data.params["alpha"], r.data.metrics["rmse"], r.data.tags["note"]) for r in runs),
    "champions": sorted(m.name + "@" + str(m.aliases["champion"]) for m in client.search_registered_models()),
}))
"""


def mlflow(script: str, server, *args: str) -> str:
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url("mlflow")}
    done = subprocess.run([sys.executable, "-c", script, server.url("mlflow"), *args], capture_output=True,
                          text=True, timeout=180, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def rows(server, database: str = "mlflow") -> dict[str, list]:
    """Every row of every table MLflow made, sorted: what must come back exactly."""
    with server.connect(database) as conn:
        tables = [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        return {t: sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"').fetchall())) for t in sorted(tables)}


def databases(server) -> set[str]:
    with server.connect("postgres") as conn:
        return {name for (name,) in conn.execute("SELECT datname FROM pg_database")}


@pytest.fixture
def store(project, plane):
    """The platform with MLflow on PostgreSQL deployed; the real PostgreSQL behind its pod's exec."""
    cluster, rendered = project.render(SETTINGS)
    deploy(cluster, project.kubeconfig, rendered, FAST)
    (project.root / "piml.yaml").write_text(yaml.safe_dump(SETTINGS))
    kube = plane.kube()
    with postgres_on() as server:
        pod = ready_pod(kube, "piml", postgres.SELECTOR, postgres.DEPLOYMENT)
        env = {"PGHOST": str(server.socket_dir), "PATH": f"{server.bindir}:/usr/bin:/bin"}
        (plane.dir / "execs.json").write_text(json.dumps({f"piml/{pod}": {"env": env}}))
        try:
            yield cluster, kube, server
        finally:
            (plane.dir / "execs.json").unlink(missing_ok=True)
            kube.close()


def test_a_dump_put_back_brings_every_row_back_and_keeps_the_replaced_database(store, tmp_path):
    cluster, kube, server = store
    mlflow(WRITE, server, "first")
    taken = rows(server)
    assert taken["runs"] and taken["metrics"] and taken["model_versions"] and taken["registered_model_aliases"]

    part = tmp_path / "mlflow-db.tar"
    said = take_mlflow_database(kube, cluster, part, timeout=60)
    version = subprocess.run([str(server.bindir / "postgres"), "--version"], capture_output=True, text=True).stdout
    assert said["server"] and said["server"] in version
    assert oct(part.stat().st_mode & 0o777) == "0o600"

    mlflow(WRITE, server, "second")  # MLflow goes on after the backup
    later = rows(server)
    assert later != taken

    with archive.member(part, MLFLOW_DUMP, str(part)) as dumped:
        aside = postgres.load(kube, "piml", dumped, "20261203T210000Z", timeout=60)
    assert aside == "mlflow_before_restore_20261203t210000z"
    assert rows(server) == taken  # exactly the rows of the backup
    assert rows(server, aside) == later  # the replaced database, whole, under its new name
    assert postgres.RESTORING not in databases(server)
    read = json.loads(mlflow(READ, server))  # MLflow opens the restored store as its own (schema at its version)
    assert read["champions"] == ["iris-first@1"] and len(read["runs"]) == 1
    assert read["runs"][0][2] == "naïve ünïcode ✓"


def test_a_dump_cut_short_or_failing_halfway_changes_nothing(store, tmp_path):
    """psql loads a dump cut short inside a table's data without an error (the COPY ends where the input does), so
    a dump without pg_dump's last line is refused before anything; one that fails halfway leaves the live database
    as it was."""
    cluster, kube, server = store
    mlflow(WRITE, server, "first")
    part = tmp_path / "mlflow-db.tar"
    take_mlflow_database(kube, cluster, part, timeout=60)
    with archive.member(part, MLFLOW_DUMP, str(part)) as dumped:
        whole = dumped.read()
    mlflow(WRITE, server, "second")
    live = rows(server)

    cut = whole[: whole.index(b"COPY public.metrics") + 200]
    with pytest.raises(PimlError) as refused:
        postgres.load(kube, "piml", io.BytesIO(cut), "20261203T210000Z", timeout=60)
    line = str(refused.value)
    assert "is cut short" in line and "\n" not in line, line
    assert rows(server) == live and postgres.RESTORING not in databases(server)

    broken = whole.replace(b"COPY public.metrics", b"COPY public.no_such_table", 1)
    with pytest.raises(PimlError) as failed:
        postgres.load(kube, "piml", io.BytesIO(broken), "20261203T210000Z", timeout=60)
    line = str(failed.value)
    assert "putting MLflow's database back failed" in line and "no_such_table" in line, line
    assert "piml/mlflow-postgres-" in line and "\n" not in line
    assert rows(server) == live
    assert databases(server) == {"postgres", "template0", "template1", "mlflow", postgres.RESTORING}


def test_pg_dump_failing_is_one_line_naming_the_pod(store, tmp_path, plane):
    cluster, kube, server = store
    execs = json.loads((plane.dir / "execs.json").read_text())
    for pod in execs.values():
        pod["env"]["PGHOST"] = str(tmp_path / "nothing-here")
    (plane.dir / "execs.json").write_text(json.dumps(execs))
    with pytest.raises(PimlError) as failed:
        take_mlflow_database(kube, cluster, tmp_path / "mlflow-db.tar", timeout=60)
    line = str(failed.value)
    assert "pg_dump failed" in line and "piml/mlflow-postgres-" in line and "\n" not in line, line


def test_piml_restore_stops_mlflow_puts_the_database_back_and_starts_it(store, tmp_path, piml, project):
    cluster, kube, server = store
    mlflow(WRITE, server, "first")
    taken = rows(server)
    versions = {"piml": "test", "mlflow": cluster.config.mlflow.version, "k3s": "v1"}
    made = archive.Manifest(project="lab", created="2026-12-03T21:00:00+00:00", versions=versions)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    part = scratch / "mlflow-db.tar"
    made.parts[MLFLOW_DATABASE_PART] = take_mlflow_database(kube, cluster, part, timeout=60)
    backups = tmp_path / "backups"
    backups.mkdir()
    archived = archive.write_archive(backups, made, {MLFLOW_DATABASE_PART: part})
    mlflow(WRITE, server, "second")

    done = piml("restore", str(archived), "--yes", "--timeout", "60", cwd=project.root)
    assert done.returncode == 0, done.stderr
    assert "restored MLflow's PostgreSQL database" in done.stdout, done.stdout
    assert "mlflow_before_restore_" in done.stdout
    assert rows(server) == taken
    scaled = kube.get("/apis/apps/v1/namespaces/piml/deployments/mlflow")
    assert scaled["spec"]["replicas"] == 1

    # the same archive where MLflow keeps its store in SQLite: refused before anything stops
    (project.root / "piml.yaml").write_text(yaml.safe_dump({"mlflow": {"backend": "sqlite"}}))
    refused = piml("restore", str(archived), "--yes", cwd=project.root)
    assert refused.returncode == 2, refused.stderr
    assert "holds MLflow's store in PostgreSQL and this project keeps it in SQLite" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
