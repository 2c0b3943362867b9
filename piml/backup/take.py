"""Taking a backup: the project, a single server's k3s datastore, MLflow's volume (and its PostgreSQL database, when
piml deploys one, dumped in its pod) and the queue's volume, each from where it lives, into one archive
(piml/backup/archive.py). Used by `piml backup`, and by `piml up` before it moves MLflow to another version (its
server migrates the store's schema, and there is no way back without a copy)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from piml.backup import postgres
from piml.errors import EXIT_FAILED, InputError, PimlError, Problem

MLFLOW_CLAIM = "mlflow-data"
MLFLOW_DEPLOYMENT = "mlflow"
# Redis keeps the queue (pending requests, their states, the dead letters) in its append-only file on this claim
# (templates/queue.yaml.j2: --appendonly yes --dir /data); the AOF, not dump.rdb, is what it reads at start.
REDIS_CLAIM = "redis-data"
REDIS_DEPLOYMENT = "redis"
# The PostgreSQL piml deploys for MLflow: a pg_dump of its database (piml/backup/postgres.py), in a part of its own
MLFLOW_DATABASE_PART = "mlflow-db"
MLFLOW_DUMP = "mlflow.sql"
RABBITMQ_STATE = "rabbitmq-state.json"  # in the part queue.tar when the queue is RabbitMQ
SCHEDULED_CLAIM = "piml-backups"  # where backup.schedule's CronJob writes (templates/mlflow.yaml.j2)
# A single server keeps the cluster in SQLite (kine, WAL mode); a snapshot is unusable without the token, which
# encrypts its secrets (https://docs.k3s.io/datastore/backup-restore).
K3S_SERVER_DIR = "/var/lib/rancher/k3s/server"
K3S_DATASTORE = ("db/state.db", "token")


def backup_dir(cluster, to: Path | None) -> Path:
    """The directory archives go to (PROJECT/backups unless `to`), made 0700 when new."""
    from piml.fsutil import make_private_dir, os_error_problem

    directory = Path(to) if to else cluster.paths.root / "backups"
    where = f"--to {directory}" if to else cluster.paths.show(directory)
    try:
        if not directory.exists():
            make_private_dir(directory)
    except OSError as exc:
        raise InputError(os_error_problem(where, exc, "cannot make the backup directory")) from None
    if not directory.is_dir():
        raise InputError(Problem(where, "is not a directory", "name a directory for the archive"))
    return directory


def take_backup(
    cluster,
    kube,
    directory: Path,
    timeout: float,
    show: Callable[[str], None],
    mlflow_running: str | None = None,
    k3s_only: bool = False,
    with_queue: bool = True,
):
    """Make the archive in `directory`; returns (its path, its manifest). `mlflow_running`: the MLflow version the
    cluster runs, when the caller has read it already. `k3s_only`: the datastore and the project, what a k3s
    upgrade puts at risk; `with_queue=False`: not the queue (an MLflow upgrade leaves it as it is). PimlError
    naming the node or the object when a part cannot be taken: then no archive is left behind."""
    from piml import __version__
    from piml.backup import archive
    from piml.fsutil import os_error_problem

    manifest = archive.Manifest(
        project=cluster.name,
        created=datetime.now(UTC).replace(microsecond=0).isoformat(),
        versions={
            "piml": __version__,
            "mlflow": mlflow_running
            or (None if k3s_only else running_mlflow(kube, cluster))
            or cluster.config.mlflow.version,
            "k3s": cluster.config.k3s.version,
        },
        left_out=left_out(cluster, k3s_only, with_queue),
    )
    with tempfile.TemporaryDirectory(prefix=".piml-backup-", dir=directory) as scratch_dir:
        scratch = Path(scratch_dir)
        parts = {archive.PROJECT_PART: scratch / "project.tar"}
        archive.write_project_part(cluster.paths.root, parts[archive.PROJECT_PART], leave_out=directory)
        show(f"project: {cluster.paths.show(cluster.paths.root)} (inventory, piml.yaml, .piml/)")
        if "k3s datastore" not in manifest.left_out:
            first = cluster.inventory.servers[0]
            parts["k3s"] = scratch / "k3s.tar"
            if len(cluster.inventory.servers) > 1:
                take_etcd_snapshot(cluster, first, parts["k3s"], timeout, manifest.created)
                manifest.parts["k3s"] = {"node": first.name, "path": K3S_SERVER_DIR, "datastore": "etcd"}
                show(f"k3s datastore: an etcd snapshot on {first.name}, and {K3S_SERVER_DIR}/token")
            else:
                take_dir(cluster, first, K3S_SERVER_DIR, parts["k3s"], timeout, only=K3S_DATASTORE)
                manifest.parts["k3s"] = {"node": first.name, "path": K3S_SERVER_DIR, "datastore": "sqlite"}
                show(f"k3s datastore: {first.name}:{K3S_SERVER_DIR}/{{{','.join(K3S_DATASTORE)}}}")
        if "mlflow" not in manifest.left_out:
            node, path = mlflow_volume(kube, cluster)
            parts["mlflow"] = scratch / "mlflow.tar"
            take_dir(cluster, node, path, parts["mlflow"], timeout)
            manifest.parts["mlflow"] = {"claim": MLFLOW_CLAIM, "node": node.name, "path": path}
            show(f"mlflow: {node.name}:{path} ({parts['mlflow'].stat().st_size} bytes)")
            if runs_postgres(cluster):
                parts[MLFLOW_DATABASE_PART] = scratch / "mlflow-db.tar"
                manifest.parts[MLFLOW_DATABASE_PART] = take_mlflow_database(
                    kube, cluster, parts[MLFLOW_DATABASE_PART], timeout
                )
                size = parts[MLFLOW_DATABASE_PART].stat().st_size
                show(f"mlflow database: pg_dump in {cluster.config.namespace}/{postgres.DEPLOYMENT} ({size} bytes)")
        if "queue" not in manifest.left_out and cluster.config.queue.kind == "rabbitmq":
            parts["queue"] = scratch / "queue.tar"
            manifest.parts["queue"] = take_rabbitmq_state(cluster, parts["queue"])
            said = manifest.parts["queue"]
            show(f"queue: RabbitMQ's state stream and dead letters ({said['requests']} requests, "
                 f"{said['dead letters']} dead letters), through a port-forward")  # fmt: skip
        elif "queue" not in manifest.left_out:
            node, path = claim_on_node(kube, cluster, REDIS_CLAIM, "Redis")
            parts["queue"] = scratch / "queue.tar"
            take_dir(cluster, node, path, parts["queue"], timeout)
            manifest.parts["queue"] = {"claim": REDIS_CLAIM, "node": node.name, "path": path, "broker": "redis"}
            show(f"queue: {node.name}:{path} (Redis's append-only file, {parts['queue'].stat().st_size} bytes)")
        try:
            return archive.write_archive(directory, manifest, parts), manifest
        except OSError as exc:
            raise PimlError(os_error_problem(str(directory), exc, "cannot write the archive"), EXIT_FAILED) from None


def left_out(cluster, k3s_only: bool = False, with_queue: bool = True) -> dict[str, str]:
    """What this backup cannot take yet, each with why: said in the archive and in the output."""
    mlflow, queue = cluster.config.mlflow, cluster.config.queue
    left = {}
    if k3s_only:
        left["queue"] = "a k3s upgrade leaves the queue's volume as it is: `piml backup` takes it"
    elif not with_queue:
        left["queue"] = "an MLflow upgrade leaves the queue's volume as it is: `piml backup` takes it"
    elif not queue.enabled:
        left["queue"] = "queue.enabled is false"
    if k3s_only:
        left["mlflow"] = "a k3s upgrade leaves MLflow's volume as it is: `piml backup` takes it"
    elif not mlflow.enabled:
        left["mlflow"] = "mlflow.enabled is false"
    elif mlflow.backend_uri:
        left["mlflow"] = "its store is an external PostgreSQL (mlflow.backend_uri): back it up where it runs"
    elif mlflow.artifacts != "pvc":
        left["mlflow artifacts"] = f"they are in {mlflow.artifacts}, outside the MLflow volume: back that up there"
    return left


def runs_postgres(cluster) -> bool:
    """MLflow's store is the PostgreSQL piml deploys (not SQLite on its volume, not an external database)."""
    mlflow = cluster.config.mlflow
    return mlflow.backend == "postgresql" and not mlflow.backend_uri


def take_mlflow_database(kube, cluster, out: Path, timeout: float) -> dict:
    """MLflow's PostgreSQL database, dumped in its pod, as a tar at `out` holding one file, mlflow.sql (each part of
    an archive is a tar); returns what the manifest says of it."""
    import tarfile

    from piml.fsutil import create_new

    dumped = out.with_name(MLFLOW_DUMP)
    os.close(create_new(dumped, 0o600))
    version = postgres.dump(kube, cluster.config.namespace, dumped, timeout)
    with os.fdopen(create_new(out, 0o600), "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        tar.add(dumped, arcname=MLFLOW_DUMP)
    dumped.unlink()
    return {"deployment": postgres.DEPLOYMENT, "database": postgres.DATABASE, "dump": MLFLOW_DUMP, "server": version}


def take_rabbitmq_state(cluster, out: Path) -> dict:
    """RabbitMQ's queue as its state: the state stream's events and the dead letters, read through a port-forward
    without taking anything (piml/queue/rabbitmq.py export_state), as the tar `out` holding RABBITMQ_STATE. Not its
    volume: RabbitMQ's message store can be copied only with the node stopped
    (https://www.rabbitmq.com/docs/backup), and the requests waiting are in their `queued` events."""
    import io
    import json
    import tarfile

    from piml.fsutil import create_new
    from piml.queue.tunnel import cluster_broker

    with cluster_broker(cluster) as broker:
        state = broker.export_state()
    body = json.dumps(state, sort_keys=True).encode()
    with os.fdopen(create_new(out, 0o600), "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(RABBITMQ_STATE)
        info.size, info.mode = len(body), 0o600
        tar.addfile(info, io.BytesIO(body))
    requests = len({str(event.get("id")) for event in state["events"]})
    return {"broker": "rabbitmq", "state": RABBITMQ_STATE, "requests": requests, "dead letters": len(state["dead"])}


def put_back_rabbitmq_state(cluster, state: dict) -> dict[str, int]:
    """Merge an archive's RabbitMQ state into the running broker (import_state): what it already has stays."""
    from piml.queue.tunnel import cluster_broker

    with cluster_broker(cluster) as broker:
        return broker.import_state(state)


def cluster_kube(cluster):
    from piml.kube.client import connect

    kubeconfig = cluster.paths.kubeconfig
    if not kubeconfig.exists():
        raise InputError(
            Problem(
                cluster.paths.show(kubeconfig),
                "no kubeconfig: there is no cluster piml set up here",
                "run it in the project directory (-C DIR), or `piml up` first",
            )
        )
    return connect(kubeconfig, cluster.paths.show(kubeconfig))


def running_mlflow(kube, cluster) -> str | None:
    """The MLflow version the cluster runs, from its Deployment's image tag (what made the data)."""
    from piml.kube.objects import dig

    live = kube.get(f"/apis/apps/v1/namespaces/{cluster.config.namespace}/deployments/{MLFLOW_DEPLOYMENT}")
    for container in dig(live or {}, "spec", "template", "spec", "containers", default=[]):
        found = re.search(r":v?(\d+\.\d+\.\d+)$", container.get("image", ""))
        if container.get("name") == "mlflow" and found:
            return found.group(1)
    return None


def mlflow_volume(kube, cluster):
    """(inventory node, directory) of MLflow's volume: the node that holds it, and where."""
    return claim_on_node(kube, cluster, MLFLOW_CLAIM, "MLflow")


def claim_on_node(kube, cluster, claim: str, who: str):
    """(inventory node, directory) of `claim`'s volume; PimlError when it is not a bound local-path volume."""
    from piml.kube.volumes import claim_volume

    namespace = cluster.config.namespace
    found = claim_volume(kube, namespace, claim)
    if found is None:
        raise PimlError(
            Problem(
                f"{namespace}/{claim}",
                f"{who}'s volume is not a bound local-path volume on one node",
                f"run `piml up` so {who} runs (piml backs up local-path volumes over SSH)",
            ),
            EXIT_FAILED,
        )
    return inventory_node(cluster, claim, found[0]), found[1]


def inventory_node(cluster, claim: str, name: str):
    """The inventory's node `name`, which holds `claim`'s volume; PimlError when piml cannot reach it."""
    node = next((n for n in cluster.inventory.nodes if n.name == name), None)
    if node is None:
        raise PimlError(
            Problem(
                f"{cluster.config.namespace}/{claim}",
                f"its volume is on node {name}, which is not in the inventory",
                f"add {name} to inventory/hosts.yml, so piml can reach it over SSH",
            ),
            EXIT_FAILED,
        )
    return node


def take_etcd_snapshot(cluster, node, out: Path, timeout: float, created: str) -> None:
    """HA servers: `k3s etcd-snapshot save` on `node` (an on-demand snapshot, named for this backup, in k3s's
    snapshot directory, https://docs.k3s.io/cli/etcd-snapshot), that file and the token into `out`, then the
    snapshot deleted again with `k3s etcd-snapshot delete` (on-demand snapshots are never pruned by k3s)."""
    import shlex

    name = "piml-backup-" + "".join(c for c in created if c.isdigit())[:14]
    snapshots = f"{K3S_SERVER_DIR}/db/snapshots"
    # saved as NAME-NODE-TIMESTAMP (with a suffix when k3s compresses): the one file that starts with NAME-
    save = f"/usr/local/bin/k3s etcd-snapshot save --name {shlex.quote(name)}"
    found = on_node(cluster, node, f"{save} >&2 && ls -1 {snapshots}", timeout)
    files = [line for line in found.stdout.splitlines() if line.startswith(name + "-")]
    if len(files) != 1:
        raise PimlError(Problem(node.name, f"k3s etcd-snapshot save left {len(files)} snapshots named {name}-*",
                                f"look in {snapshots}"), EXIT_FAILED)  # fmt: skip
    try:
        take_dir(cluster, node, K3S_SERVER_DIR, out, timeout, only=(f"db/snapshots/{files[0]}", "token"))
    finally:
        on_node(cluster, node, f"/usr/local/bin/k3s etcd-snapshot delete {shlex.quote(files[0])} || true", 60.0)


def take_dir(cluster, node, path: str, out: Path, timeout: float, only: tuple[str, ...] = ()) -> None:
    from piml.backup.onnode import snapshot_command

    with open(out, "wb") as sink:
        on_node(cluster, node, snapshot_command(path, only), timeout, receive=sink)


def on_node(cluster, node, command: str, timeout: float, send=None, receive=None):
    """Run one command on `node` with sudo, bytes in or out; a failure is one line naming the node (exit 1)."""
    from piml.ssh.fleet import Fleet, Timeouts
    from piml.ssh.hostkeys import KnownHosts

    known = KnownHosts(cluster.paths.known_hosts, accept_new=False)
    with Fleet([node], known, Timeouts(connect=10.0, command=timeout)) as fleet:
        answer = fleet.stream(node.name, command, sudo=True, timeout=timeout, send=send, receive=receive)
    if answer.failure is not None or answer.value is None:
        failure = answer.failure
        raise PimlError(Problem(node.name, failure.reason, failure.fix) if failure else node.name, EXIT_FAILED)
    if answer.value.exit_code != 0:
        said = (answer.value.stderr.strip().splitlines() or [f"exit {answer.value.exit_code}"])[-1]
        raise PimlError(Problem(node.name, f"the copy failed: {said[:200]}", "see the node's disk and python3"),
                        EXIT_FAILED)  # fmt: skip
    return answer.value


UPGRADE_BACKUP_TIMEOUT = 1800.0


def backup_before_mlflow_upgrade(cluster, kubeconfig: Path, show: Callable[[str], None]) -> Path | None:
    """Before the platform stage moves MLflow to another version: a backup, when the cluster runs another MLflow
    than piml.yaml asks for and its store is on its volume (the new server migrates the schema, one way: there
    is no `mlflow db downgrade` worth the name). Returns the archive, or None when there was nothing to do."""
    from piml.kube.client import connect
    from piml.kube.volumes import claim_volume

    mlflow = cluster.config.mlflow
    if not mlflow.enabled or "mlflow" in left_out(cluster):
        return None
    kube = connect(kubeconfig, cluster.paths.show(kubeconfig))
    running = running_mlflow(kube, cluster)
    if running is None or running == mlflow.version:
        return None
    if claim_volume(kube, cluster.config.namespace, MLFLOW_CLAIM) is None:
        return None  # no store yet: nothing to lose
    show(f"MLflow {running} -> {mlflow.version}: backing up its data first")
    archive, _ = take_backup(
        cluster, kube, backup_dir(cluster, None), UPGRADE_BACKUP_TIMEOUT, show, running, with_queue=False
    )
    show(f"backup: {cluster.paths.show(archive)} (`piml restore` it under MLflow {running} to go back)")
    return archive
