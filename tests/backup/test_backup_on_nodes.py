"""`piml backup` and `piml restore` of MLflow with real data, through a real node.

A test node (Debian bookworm, systemd, sshd, sudo, python3) plays the board that holds MLflow's local-path
volume, at the path k3s's local-path provisioner gives it. A real `mlflow server` (the pinned MLflow, basic auth),
run on this machine, keeps its stores in that directory, exactly as piml's MLflow pod lays out /mlflow. Runs,
metrics, parameters, tags, artifacts and a registered scikit-learn model are logged through it. A real
redis-server, run with the args of piml's Redis pod (`--appendonly yes`), keeps the queue in the Redis volume's
directory; requests are queued through piml's client.

The Kubernetes side (the claim, its volume, the MLflow Deployment and its pods) is the kubeapi STAND-IN
(tests/standins/kubeapi): piml reads where the volume is from it, and scales the Deployment to 0 and back. What the
stand-in hides: a real pod's termination grace period (its pods are gone at once) and a real mount of the volume.

Then: the backup taken while MLflow runs; MLflow stopped and its store replaced by a fresh empty one (a board
re-flashed); `piml restore`; MLflow started again on the restored directory has every run, metric, parameter, tag,
model version and artifact, byte for byte, and the model predicts as before; Redis started again on its restored
directory has every queued request, still queued. A damaged archive is refused and
changes nothing."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import stat
import subprocess
import tarfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from piml.client import status, submit
from tests.ports import free_port
from tests.queue.helpers import SECRETS, stop, wait_for
from tests.services import mlflow_on

VOLUME = "/var/lib/rancher/k3s/storage/pvc-6f1c2a9e-4b7d-4c1e-9a3f-0d2b8e5c7a11_piml_mlflow-data"
REDIS_VOLUME = "/var/lib/rancher/k3s/storage/pvc-0b9d3c6e-2a1f-4e7d-8c5b-3f6a1d9e4b27_piml_redis-data"


@contextmanager
def redis_on(data: Path, password: str):
    """A real redis-server keeping its files in `data` with the args piml's Redis pod runs with (--appendonly yes),
    on a loopback port; its queue URL, as piml's client takes it. Stopped (SIGTERM, as a pod is) at exit."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--appendonly", "yes", "--dir", str(data), "--requirepass", password,
         "--bind", "127.0.0.1", "--port", str(port), "--logfile", str(data.parent / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        wait_for(client.ping, 20, "redis-server", proc, data.parent / "redis.log")
        client.close()
        yield url
    finally:
        stop(proc)


@pytest.fixture
def board(node_factory):
    (node,) = node_factory(1, names=["pi1"])
    yield node
    node_factory.destroy([node])


def project(piml, base: Path, node) -> Path:
    out = piml("init", "lab", "--ssh-key", node.key_path, "--node", f"pi1={node.address}:server", cwd=base)
    assert out.returncode == 0, out.stderr
    root = base / "lab"
    (root / ".piml/known_hosts").write_text(Path(node.known_hosts).read_text())
    return root


def cluster_api(root: Path):
    """The stand-in API holding MLflow's claim, bound to a local-path volume on pi1, and its Deployment."""
    from kubernetes import client, config

    from tests.standins.kubeapi.server import FakeKubeAPI

    api = FakeKubeAPI().start()
    api.write_kubeconfig(root / ".piml/kubeconfig")
    api.add_node("pi1")
    core = client.CoreV1Api(config.new_client_from_config(str(root / ".piml/kubeconfig")))
    apps = client.AppsV1Api(core.api_client)
    core.create_namespace({"metadata": {"name": "piml"}})
    local_path_volume(core, "mlflow-data", VOLUME)
    local_path_volume(core, "redis-data", REDIS_VOLUME)
    for name, image in (("mlflow", "ghcr.io/mlflow/mlflow:v3.18.0"), ("redis", "redis:7.4.1")):
        labels = {"app.kubernetes.io/name": name}
        container = {"name": name, "image": image}
        apps.create_namespaced_deployment(
            "piml",
            {
                "metadata": {"name": name},
                "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                         "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}},
            },
        )  # fmt: skip
    core.api_client.close()
    return api


def local_path_volume(core, claim_name: str, path: str) -> None:
    """A claim bound to a local-path volume at `path` on pi1, as k3s's local-path provisioner writes them."""
    pv_name = path.rsplit("/", 1)[1].split("_", 1)[0]
    claim = core.create_namespaced_persistent_volume_claim(
        "piml",
        {
            "metadata": {"name": claim_name},
            "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local-path", "volumeName": pv_name,
                     "resources": {"requests": {"storage": "10Gi"}}},
        },
    )  # fmt: skip
    on_pi1 = {"key": "kubernetes.io/hostname", "operator": "In", "values": ["pi1"]}
    core.create_persistent_volume(
        {
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteOnce"],
                "hostPath": {"path": path, "type": "DirectoryOrCreate"},
                "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [on_pi1]}]}},
                "claimRef": {"namespace": "piml", "name": claim_name, "uid": claim.metadata.uid},
                "storageClassName": "local-path",
            },
        }
    )


class KineDatastore:
    """A SQLite file in WAL mode where a k3s server keeps it, written the way kine writes: an open connection
    whose commits sit in state.db-wal (no checkpoint), so a plain copy of state.db would miss them."""

    def __init__(self, root: Path):
        server = root / "var/lib/rancher/k3s/server"
        (server / "db").mkdir(parents=True)
        self.token = "K10" + secrets.token_hex(32) + "::server:" + secrets.token_hex(16)
        (server / "token").write_text(self.token)
        os.chmod(server / "token", 0o600)
        self.db = sqlite3.connect(server / "db/state.db")
        self.db.execute("pragma journal_mode=wal")
        self.db.execute("pragma wal_autocheckpoint=0")
        self.db.execute("create table kine (id integer primary key, name text, value blob)")
        self.rows = 300
        for i in range(self.rows):
            self.db.execute("insert into kine (name, value) values (?, ?)", (f"/registry/pods/p{i}", os.urandom(64)))
            self.db.commit()
        assert (server / "db/state.db-wal").stat().st_size > 0

    def close(self) -> None:
        self.db.close()


def log_everything(server) -> None:
    """Two runs with parameters, metric histories, tags and artifacts (text and binary), and a registered
    scikit-learn model, all through the real server and its artifact proxy."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    os.environ["MLFLOW_TRACKING_URI"] = server.url  # the test's monkeypatch puts it back: nothing global leaks
    experiment = mlflow.MlflowClient(server.url).create_experiment("backup-test")
    rng = np.random.default_rng(7)
    for i in range(2):
        with mlflow.start_run(experiment_id=experiment, run_name=f"run-{i}"):
            mlflow.log_params({"lr": 0.1 * (i + 1), "depth": i + 3})
            for step in range(5):
                mlflow.log_metric("loss", 1.0 / (step + 1 + i), step=step)
            mlflow.set_tag("board", "pi1")
            mlflow.log_text(f"notes of run {i}\n", "notes/readme.txt")
            mlflow.log_dict({"seed": 7, "run": i}, "config.json")
    X = rng.normal(size=(40, 3))
    y = (X[:, 0] > 0).astype(int)
    with mlflow.start_run(experiment_id=experiment, run_name="model"):
        info = mlflow.sklearn.log_model(LogisticRegression().fit(X, y), name="model", input_example=X[:2])
    mlflow.register_model(info.model_uri, "iris-backup")


def everything(server, tmp_path: Path) -> dict:
    """What the server holds, as plain data: experiments, runs (parameters, metric histories, tags), model
    versions, and every artifact's bytes, plus the registered model's predictions on fixed rows."""
    import mlflow
    import numpy as np
    from mlflow import MlflowClient

    os.environ["MLFLOW_TRACKING_URI"] = server.url
    client = MlflowClient(server.url)
    seen: dict = {"experiments": {}, "runs": {}, "models": {}, "artifacts": {}}
    for experiment in client.search_experiments():
        seen["experiments"][experiment.experiment_id] = experiment.name
        for run in client.search_runs([experiment.experiment_id]):
            history = {key: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run.info.run_id, key)]
                       for key in run.data.metrics}  # fmt: skip
            tags = {k: v for k, v in run.data.tags.items()}
            seen["runs"][run.info.run_id] = (run.info.run_name, run.info.status, run.info.start_time,
                                             run.data.params, history, tags)  # fmt: skip
            local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "a")))
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                seen["artifacts"][f"{run.info.run_id}/{path.relative_to(local)}"] = path.read_bytes()
            for path in local.rglob("*"):
                if path.is_file():
                    path.unlink()
    for version in client.search_model_versions("name='iris-backup'"):
        seen["models"][version.version] = (version.source, version.run_id, version.status)
        local = Path(mlflow.artifacts.download_artifacts(f"models:/iris-backup/{version.version}",
                                                         dst_path=str(tmp_path / f"m{version.version}")))  # fmt: skip
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            seen["artifacts"][f"models/{version.version}/{path.relative_to(local)}"] = path.read_bytes()
    if seen["models"]:
        rows = np.linspace(-2, 2, 12).reshape(4, 3)
        seen["predictions"] = mlflow.pyfunc.load_model("models:/iris-backup/1").predict(rows).tolist()
    return seen


def test_backup_then_restore_onto_a_fresh_store_brings_back_every_run_model_and_artifact(
    piml, tmp_path, node_factory, board, monkeypatch
):
    sub = node_factory.substrate
    volume = sub.root_of(board.name) / VOLUME.lstrip("/")  # the node's directory, as this machine sees it
    volume.mkdir(parents=True, mode=0o777)
    root = project(piml, tmp_path, board)
    password = secrets.token_urlsafe(18)
    SECRETS.append(password)
    config_dir = tmp_path / "mlflow-config"
    config_dir.mkdir()
    # MLflow's client reads these at each call; monkeypatch restores them (and MLFLOW_TRACKING_URI, set per
    # server below) for the tests after this one, which talk to the session's own MLflow server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    api = cluster_api(root)
    datastore = KineDatastore(sub.root_of(board.name))
    queue_dir = sub.root_of(board.name) / REDIS_VOLUME.lstrip("/")
    queue_dir.mkdir(parents=True)
    try:
        with mlflow_on(volume, password, config_dir) as server, redis_on(queue_dir, password) as queue_url:
            log_everything(server)
            before = everything(server, tmp_path / "before")
            queued = [submit("models:/iris-backup/1", f"s3://data/{i}.csv", queue_url=queue_url) for i in range(5)]
            out = piml("backup", "--to", str(tmp_path / "backups"), "-C", str(root), timeout=300)
            assert out.returncode == 0, out.stderr  # taken while MLflow and Redis run
        (archive,) = (tmp_path / "backups").glob("piml-backup-lab-*.tar.gz")
        assert f"backup: {archive}" in out.stdout and f"pi1:{VOLUME}" in out.stdout, out.stdout
        assert f"queue: pi1:{REDIS_VOLUME} (Redis's append-only file" in out.stdout, out.stdout
        assert "not in this backup" not in out.stdout, out.stdout
        assert stat.S_IMODE(archive.stat().st_mode) == 0o600
        with tarfile.open(archive) as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())
            k3s_part = tarfile.open(fileobj=tar.extractfile("k3s.tar"))
            assert sorted(k3s_part.getnames()) == ["db/state.db", "token"]  # no -wal: the copy holds what it held
            k3s_part.extractall(tmp_path / "k3s")
        assert manifest["versions"]["mlflow"] == "3.18.0"  # from the running Deployment's image
        # the single server's datastore: every committed row, also those only in the -wal file; and its token
        copy = sqlite3.connect(tmp_path / "k3s/db/state.db")
        assert copy.execute("select count(*) from kine").fetchone() == (datastore.rows,)
        assert (tmp_path / "k3s/token").read_text() == datastore.token
        datastore.close()
        assert password not in out.stdout + out.stderr

        # the board re-flashed: MLflow starts on an empty store, which piml restore then replaces
        sub.run(board, f"sudo rm -rf {VOLUME} {REDIS_VOLUME} && sudo mkdir -m 777 {VOLUME} {REDIS_VOLUME}")
        with mlflow_on(volume, password, config_dir) as server:
            assert everything(server, tmp_path / "empty")["runs"] == {}

        damaged = tmp_path / "damaged.tar.gz"
        data = bytearray(archive.read_bytes())
        data[len(data) // 3] ^= 0x10
        damaged.write_bytes(bytes(data))
        (tmp_path / "damaged.tar.gz.sha256").write_text(archive.with_name(archive.name + ".sha256").read_text())
        patches = len([r for r in api.requests if r[0] == "PATCH"])
        out = piml("restore", str(damaged), "--yes", "-C", str(root), timeout=120)
        assert out.returncode == 2 and "checksum fails" in out.stderr and out.stderr.count("\n") == 1, out.stderr
        assert len([r for r in api.requests if r[0] == "PATCH"]) == patches  # MLflow was never stopped

        out = piml("restore", str(archive), "--yes", "--json", "-C", str(root), timeout=300)
        assert out.returncode == 0, out.stderr
        restored = json.loads(out.stdout)
        assert restored["ok"] and restored["restored"] == {"mlflow": f"pi1:{VOLUME}", "queue": f"pi1:{REDIS_VOLUME}"}
        kept = restored["kept"]["mlflow"].removeprefix("pi1:")
        assert kept.startswith(VOLUME + ".before-restore-"), restored
        for name in ("mlflow", "redis"):
            assert api.get("deployments", "piml", name)["spec"]["replicas"] == 1  # stopped for the copy, started
        assert sub.run(board, f"sudo test -f {kept}/mlflow.db && echo kept").stdout.strip() == "kept"
        with redis_on(queue_dir, password) as queue_url:  # the requests wait again, each as it was
            assert [(status(i, queue_url=queue_url) or {}).get("state") for i in queued] == ["queued"] * 5

        with mlflow_on(volume, password, config_dir) as server:
            after = everything(server, tmp_path / "after")
        assert after["runs"] == before["runs"] and len(before["runs"]) == 3
        assert after["experiments"] == before["experiments"] and after["models"] == before["models"]
        assert after["artifacts"].keys() == before["artifacts"].keys()
        assert after["artifacts"] == before["artifacts"]  # byte for byte
        assert after["predictions"] == before["predictions"]

        # `piml up` about to move MLflow to another version backs its data up first; at the same version, not
        from piml.backup.take import backup_before_mlflow_upgrade
        from piml.kube.client import connect
        from piml.project import ProjectPaths, load_cluster

        cluster = load_cluster(ProjectPaths.resolve(root, None))
        lines: list[str] = []
        assert backup_before_mlflow_upgrade(cluster, root / ".piml/kubeconfig", lines.append) is None
        older = {"name": "mlflow", "image": "ghcr.io/mlflow/mlflow:v3.17.2"}  # what the cluster runs now
        connect(root / ".piml/kubeconfig").request(
            "PATCH", "/apis/apps/v1/namespaces/piml/deployments/mlflow",
            body={"spec": {"template": {"spec": {"containers": [older]}}}},
            content_type="application/merge-patch+json",
        )  # fmt: skip
        made = backup_before_mlflow_upgrade(cluster, root / ".piml/kubeconfig", lines.append)
        assert made is not None and made.parent == root / "backups", lines
        with tarfile.open(made) as tar:
            assert json.loads(tar.extractfile("manifest.json").read())["versions"]["mlflow"] == "3.17.2"
        assert lines[0] == "MLflow 3.17.2 -> 3.18.0: backing up its data first", lines
    finally:
        api.stop()


def test_backup_names_the_node_that_cannot_be_reached(piml, tmp_path, node_factory, board):
    root = project(piml, tmp_path, board)
    inventory = root / "inventory/hosts.yml"
    data = yaml.safe_load(inventory.read_text())
    data["k3s_cluster"]["children"]["server"]["hosts"]["pi1"]["ansible_port"] = 2  # nothing listens there
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    api = cluster_api(root)
    try:
        out = piml("backup", "-C", str(root), timeout=120)
    finally:
        api.stop()
    assert out.returncode == 1 and out.stderr.startswith("error: pi1:"), out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert not list((root / "backups").glob("*")), "nothing half-written"


BACKUPS = "/var/lib/rancher/k3s/storage/pvc-0b5e7d31-8c2f-4a6e-b1d4-7f9a3c2e6d05_piml_piml-backups"


def test_scheduled_backups_are_copied_from_their_volume_once_and_checked(piml, tmp_path, node_factory, board):
    """What backup.schedule's CronJob left in its volume on the board (its program, run here on the board's disk
    as the pod runs it on the node's) is copied by `piml backup --scheduled`: checked, private, once."""
    import subprocess
    import sys

    from kubernetes import client, config

    from piml.backup import archive
    from piml.backup.onnode import SNAPSHOT
    from piml.render.source import PACKAGE

    sub = node_factory.substrate
    store, backups = (sub.root_of(board.name) / p.lstrip("/") for p in (VOLUME, BACKUPS))
    store.mkdir(parents=True, mode=0o777)
    backups.mkdir(parents=True, mode=0o777)
    sqlite3.connect(store / "mlflow.db").execute("create table runs (id text)").connection.commit()
    (tmp_path / "snapshot.py").write_text(SNAPSHOT)
    root = project(piml, tmp_path, board)
    api = cluster_api(root)
    try:
        out = piml("backup", "--scheduled", "-C", str(root), timeout=120)
        assert out.returncode == 1 and "no volume of scheduled backups" in out.stderr, out.stderr
        assert out.stderr.count("\n") == 1, out.stderr
        core = client.CoreV1Api(config.new_client_from_config(str(root / ".piml/kubeconfig")))
        local_path_volume(core, "piml-backups", BACKUPS)
        core.api_client.close()
        program = [sys.executable, str(PACKAGE / "backup/scheduled.py"), str(tmp_path / "snapshot.py"), str(store)]
        for _ in range(2):
            ran = subprocess.run([*program, str(backups), "--keep=3", "--project=lab", "--mlflow-version=3.18.0",
                                  "--piml-version=0.1.0"], capture_output=True, text=True, timeout=60)  # fmt: skip
            assert ran.returncode == 0, ran.stderr
            time.sleep(1.05)
        made = sorted(p.name for p in backups.glob("*.tar.gz"))
        assert len(made) == 2

        out = piml("backup", "--scheduled", "--to", str(tmp_path / "here"), "-C", str(root), timeout=120)
        assert out.returncode == 0, out.stderr
        assert "scheduled backups: 2 copied to" in out.stdout and ", 0 already there" in out.stdout, out.stdout
        here = tmp_path / "here"
        assert sorted(p.name for p in here.iterdir()) == sorted([*made, *(m + ".sha256" for m in made)])
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in here.iterdir())
        (tmp_path / "read").mkdir()
        with archive.opened(here / made[-1], tmp_path / "read") as (manifest, parts):  # what `piml restore` reads
            assert set(parts) == {"mlflow"} and manifest.versions["mlflow"] == "3.18.0"

        out = piml("backup", "--scheduled", "--to", str(here), "--json", "-C", str(root), timeout=120)
        assert out.returncode == 0 and json.loads(out.stdout)["already_here"] == made, out.stdout + out.stderr

        # an archive damaged on the node is not taken in, and nothing half-copied is left
        (here / made[-1]).unlink()
        (here / f"{made[-1]}.sha256").unlink()
        sub.run(board, f"sudo sh -c 'printf x | dd of={BACKUPS}/{made[-1]} bs=1 seek=100 conv=notrunc 2>/dev/null'")
        out = piml("backup", "--scheduled", "--to", str(here), "-C", str(root), timeout=120)
        assert out.returncode == 1 and "does not match its .sha256" in out.stderr, out.stderr
        assert sorted(p.name for p in here.iterdir()) == [made[0], made[0] + ".sha256"]
    finally:
        api.stop()
