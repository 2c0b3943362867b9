"""`piml backup` and `piml restore`.

backup: the project (inventory, piml.yaml, .piml/), the k3s datastore (a single server's SQLite, or an etcd
snapshot, and the token), MLflow's volume (its SQLite stores copied online, its artifacts) and Redis's (the queue's
append-only file), each taken over SSH from the node that holds it, and MLflow's PostgreSQL database when piml
deploys one (pg_dump in its pod), and RabbitMQ's state when the queue is RabbitMQ (its state stream and dead
letters, read through a port-forward), into one archive (piml/backup/take.py). What it does not hold yet is named in
the archive and in the output, never silently missing.

restore: MLflow's data and the queue from an archive back onto the running cluster. The archive is checked whole
first; then MLflow and Redis are stopped (their Deployments scaled to 0, their pods gone), each volume's directory
is replaced on its node with the old one kept beside it, MLflow's PostgreSQL database is replaced with the old one
kept under another name (piml/backup/postgres.py), and they are started again and waited for. RabbitMQ keeps
running: the requests it does not know are merged into it (waiting ones queued again). The project
part is not written over the project (that would replace the keys and secrets of the cluster at hand):
`tar -xzf ARCHIVE project.tar` takes it.
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from piml.backup import postgres
from piml.backup.take import (
    MLFLOW_CLAIM,
    MLFLOW_DATABASE_PART,
    MLFLOW_DEPLOYMENT,
    MLFLOW_DUMP,
    RABBITMQ_STATE,
    REDIS_CLAIM,
    REDIS_DEPLOYMENT,
)
from piml.errors import EXIT_FAILED, InputError, PimlError, Problem
from piml.output import console, print_json

STOP_TIMEOUT = 120.0  # MLflow's pods gone after scaling to 0
START_TIMEOUT = 300.0  # MLflow available again (a Pi pulls nothing: the image is there)


def run_backup(project: Path | None, inventory: Path | None, to: Path | None, timeout: float, as_json: bool) -> None:
    from piml.backup.take import backup_dir, cluster_kube, take_backup
    from piml.project import ProjectPaths, load_cluster

    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    kube = cluster_kube(cluster)  # first: with no cluster, no backups/ directory is made either
    directory = backup_dir(cluster, to)
    show = (lambda line: None) if as_json else (lambda line: console().print(f"  {line}", markup=False))
    final, manifest = take_backup(cluster, kube, directory, timeout, show)
    if as_json:
        print_json({"archive": str(final), "manifest": manifest.as_dict(), "ok": True})
        return
    for what, why in manifest.left_out.items():
        console().print(f"  not in this backup: {what}: {why}", markup=False)
    console().print(f"backup: {cluster.paths.show(final)} (mode 0600, sha256 in {final.name}.sha256)", markup=False)


def run_fetch_scheduled(project: Path | None, inventory: Path | None, to: Path | None, timeout: float,
                        as_json: bool) -> None:  # fmt: skip
    from piml.backup.fetch import fetch_from_bucket, fetch_scheduled
    from piml.backup.take import backup_dir, cluster_kube
    from piml.project import ProjectPaths, load_cluster

    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    show = (lambda line: None) if as_json else (lambda line: console().print(f"  {line}", markup=False))
    # the bucket needs no cluster: it is there when MLflow's board is gone
    kube = None if cluster.config.backup.s3_uri else cluster_kube(cluster)
    directory = backup_dir(cluster, to)
    if kube is None:
        copied, present = fetch_from_bucket(cluster, directory, timeout, show)
    else:
        copied, present = fetch_scheduled(cluster, kube, directory, timeout, show)
    if as_json:
        print_json({"copied": [str(p) for p in copied], "already_here": present, "ok": True})
        return
    where = cluster.paths.show(directory)
    console().print(f"scheduled backups: {len(copied)} copied to {where}, {len(present)} already there", markup=False)


def run_restore(
    project: Path | None, inventory: Path | None, source: Path, yes: bool, timeout: float, as_json: bool
) -> None:
    from piml.backup import archive
    from piml.backup.take import cluster_kube, put_back_rabbitmq_state
    from piml.kube.podexec import ready_pod
    from piml.kube.scale import scale, wait_available
    from piml.project import ProjectPaths, load_cluster

    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    namespace = cluster.config.namespace
    show = (lambda line: None) if as_json else (lambda line: console().print(f"  {line}", markup=False))
    with tempfile.TemporaryDirectory(prefix="piml-restore-") as scratch_dir:
        with archive.opened(Path(source), Path(scratch_dir)) as (manifest, parts):
            rabbitmq = RABBITMQ.part in parts and manifest.parts[RABBITMQ.part].get("broker") == "rabbitmq"
            stores = [store for store in STORES if store.part in parts and not (rabbitmq and store is REDIS)]
            stores += [RABBITMQ] if rabbitmq else []
            if not stores:
                raise InputError(Problem(str(source), "holds no MLflow or queue data", "name an archive that does"))
            for store in stores:
                store.refuse(manifest, cluster, str(source))
            if rabbitmq:
                with archive.member(parts[RABBITMQ.part], RABBITMQ_STATE, str(source)) as data:
                    queue_state = _rabbitmq_state(data.read(), str(source))
            kube = cluster_kube(cluster)
            volumes = {store.part: store.volume(kube, cluster) for store in stores if store.claim}
            places = {part: f"{node.name}:{path}" for part, (node, path) in volumes.items()}
            if DATABASE.part in parts:
                with archive.member(parts[DATABASE.part], MLFLOW_DUMP, str(source)):
                    pass  # there, before anything stops
                ready_pod(kube, namespace, postgres.SELECTOR, postgres.DEPLOYMENT)
                places[DATABASE.part] = f"database {postgres.DATABASE} in {namespace}/{postgres.DEPLOYMENT}"
            if rabbitmq:
                places[RABBITMQ.part] = f"merged into {namespace}/rabbitmq: what it has stays"
            _confirm(yes, cluster, manifest, [f"{store.what} ({places[store.part]})" for store in stores])
            # RabbitMQ keeps running: its part is merged into it, not put in its place
            deployments = list(dict.fromkeys(store.deployment for store in stores if store is not RABBITMQ))
            replicas = {deployment: scale(kube, namespace, deployment, 0) for deployment in deployments}
            try:
                _wait_stopped(kube, namespace, deployments)
                kept = _put_back(cluster, kube, source, parts, stores, volumes, places, timeout, show)
            finally:
                for deployment, count in replicas.items():
                    scale(kube, namespace, deployment, max(count, 1))
            until = time.monotonic() + START_TIMEOUT
            started = {deployment: wait_available(kube, namespace, deployment, until) for deployment in deployments}
            if rabbitmq:
                merged = put_back_rabbitmq_state(cluster, queue_state)
                show(f"RabbitMQ: {merged['requests']} requests back ({merged['queued']} queued again), "
                     f"{merged['dead letters']} dead letters; what it had stays")  # fmt: skip
    _report_restore(cluster, source, manifest, stores, places, kept, started, merged if rabbitmq else None, as_json)


def _wait_stopped(kube, namespace: str, deployments: list[str]) -> None:
    """Until every pod of `deployments` is gone (bounded); PimlError naming what still runs."""
    from piml.kube.scale import wait_stopped

    until = time.monotonic() + STOP_TIMEOUT
    for deployment in deployments:
        left = wait_stopped(kube, namespace, deployment, until)
        if left:
            raise PimlError(
                Problem(
                    f"{namespace}/{deployment}",
                    f"its pods did not stop within {STOP_TIMEOUT:.0f} s ({', '.join(left)}): nothing restored",
                    f"see `kubectl -n {namespace} describe pod {left[0]}`, then run piml restore again",
                ),
                EXIT_FAILED,
            )


def _put_back(cluster, kube, source: Path, parts, stores, volumes, places, timeout: float, show) -> dict[str, str]:
    """With the stores' Deployments stopped: MLflow's database, then each volume's part. Returns where the data
    each replaced is kept."""
    from piml.backup import archive
    from piml.backup.onnode import put_back_command
    from piml.backup.take import on_node

    namespace = cluster.config.namespace
    kept: dict[str, str] = {}
    stamp = archive.stamp()
    if DATABASE.part in parts:
        show(f"{MLFLOW_DEPLOYMENT} stopped; putting {parts[DATABASE.part].stat().st_size} bytes back "
             f"into {places[DATABASE.part]}")  # fmt: skip
        with archive.member(parts[DATABASE.part], MLFLOW_DUMP, str(source)) as dumped:
            aside = postgres.load(kube, namespace, dumped, stamp, timeout)
        kept[DATABASE.part] = f"database {aside} in {namespace}/{postgres.DEPLOYMENT}"
    for store in stores:
        if store.part not in volumes:
            continue
        node, path = volumes[store.part]
        show(f"{store.deployment} stopped; putting {parts[store.part].stat().st_size} bytes back on "
             f"{node.name}:{path}")  # fmt: skip
        with open(parts[store.part], "rb") as data:
            answer = on_node(cluster, node, put_back_command(path, stamp), timeout, send=data)
        if answer.stdout.strip():
            kept[store.part] = f"{node.name}:{answer.stdout.strip()}"
    return kept


def _report_restore(cluster, source: Path, manifest, stores, places, kept, started, merged, as_json: bool) -> None:
    """What was restored and where the replaced data is kept; PimlError when a store did not come back."""
    namespace = cluster.config.namespace
    result = {
        "archive": str(source),
        "created": manifest.created,
        "restored": places,
        "kept": kept or None,
        **({"queue": merged} if merged is not None else {}),
        **{deployment: how for deployment, (_, how) in started.items()},
        "ok": all(ok for ok, _ in started.values()),
    }
    if as_json:
        print_json(result)
    else:
        for part, aside in kept.items():
            console().print(f"  the {part} data it replaced is kept: {aside}", markup=False)
        said = "; ".join(f"{deployment}: {how}" for deployment, (_, how) in started.items())
        restored = " and ".join(store.what for store in stores)
        console().print(f"restored {restored} from {source} (made {manifest.created}); {said}", markup=False)
    for deployment, (ok, how) in started.items():
        if not ok:
            raise PimlError(
                Problem(
                    f"{namespace}/{deployment}",
                    f"not available within {START_TIMEOUT:.0f} s after the restore ({how})",
                    "see `piml status`; the data is in place, and the old data is kept beside it",
                ),
                EXIT_FAILED,
            )


@dataclass(frozen=True)
class Store:
    """A part of an archive that `piml restore` puts back, with `deployment` stopped meanwhile: the volume of
    `claim`, or (no claim) MLflow's PostgreSQL database."""

    part: str
    what: str
    deployment: str
    claim: str | None

    def volume(self, kube, cluster):
        from piml.backup.take import claim_on_node

        assert self.claim
        return claim_on_node(kube, cluster, self.claim, self.what)

    def refuse(self, manifest, cluster, where: str) -> None:
        if self.part in ("mlflow", DATABASE.part):
            _refuse_versions(manifest, cluster, where)
            _refuse_stores(manifest, cluster, where)
        elif not cluster.config.queue.enabled or cluster.config.queue.kind != manifest.parts[self.part]["broker"]:
            runs = cluster.config.queue.kind if cluster.config.queue.enabled else "no queue"
            raise InputError(
                Problem(
                    where,
                    f"holds {manifest.parts[self.part]['broker']}'s queue and this project runs {runs}",
                    f"set queue.kind: {manifest.parts[self.part]['broker']} in piml.yaml and `piml up` first, "
                    "or restore another archive",
                )
            )


DATABASE = Store(MLFLOW_DATABASE_PART, "MLflow's PostgreSQL database", MLFLOW_DEPLOYMENT, None)
REDIS = Store("queue", "Redis", REDIS_DEPLOYMENT, REDIS_CLAIM)
RABBITMQ = Store("queue", "RabbitMQ's requests", "rabbitmq", None)  # merged into the running broker
STORES = (Store("mlflow", "MLflow", MLFLOW_DEPLOYMENT, MLFLOW_CLAIM), DATABASE, REDIS)


def _rabbitmq_state(body: bytes, where: str) -> dict:
    """The archive's RabbitMQ state (take.take_rabbitmq_state), checked for its shape before anything changes."""
    import json

    try:
        state = json.loads(body)
    except ValueError:
        state = None
    if not (isinstance(state, dict) and isinstance(state.get("events"), list) and isinstance(state.get("dead"), list)):
        raise InputError(Problem(where, f"its {RABBITMQ_STATE} is not RabbitMQ state written by piml backup",
                                 "restore from another copy of the archive"))  # fmt: skip
    return state


def _refuse_stores(manifest, cluster, where: str) -> None:
    """An archive of MLflow on SQLite restored where MLflow runs on PostgreSQL, or the other way: the store would
    land where the running MLflow does not read it."""
    from piml.backup.take import runs_postgres

    made = "PostgreSQL" if MLFLOW_DATABASE_PART in manifest.parts else "SQLite"
    runs = "PostgreSQL" if runs_postgres(cluster) else "SQLite"
    if cluster.config.mlflow.backend_uri:
        runs = "an external PostgreSQL"
    if made != runs:
        backend = "postgresql" if made == "PostgreSQL" else "sqlite"
        raise InputError(
            Problem(
                where,
                f"holds MLflow's store in {made} and this project keeps it in {runs}",
                f"set mlflow.backend: {backend} (no backend_uri) in piml.yaml and `piml up` first, "
                "or restore another archive",
            )
        )


def _refuse_versions(manifest, cluster, where: str) -> None:
    made, runs = manifest.versions.get("mlflow"), cluster.config.mlflow.version
    if made != runs:
        raise InputError(
            Problem(
                where,
                f"holds MLflow {made}'s stores and this project runs MLflow {runs}: their database schemas differ",
                f"set mlflow.version: {made} in piml.yaml, `piml up`, restore, then move to {runs}",
            )
        )


def _confirm(yes: bool, cluster, manifest, volumes: list[str]) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise InputError(Problem("piml restore", "asks for confirmation, but there is no terminal to ask on",
                                 "pass --yes"))  # fmt: skip
    import typer

    question = (
        f"Replace the data of {' and '.join(volumes)} in '{cluster.name}' with the archive's from "
        f"{manifest.created}? They stop meanwhile; the data they have now is kept beside it"
    )
    if not typer.confirm(question, default=False):
        console().print("nothing was changed")
        raise SystemExit(1)
