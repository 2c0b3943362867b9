"""`piml backup` and `piml restore`.

backup: the project (inventory, piml.yaml, .piml/), a single server's k3s datastore (SQLite, and the token) and
MLflow's volume (its SQLite stores copied online, its artifacts), each taken over SSH from the node that holds it,
into one archive (piml/backup/take.py). What it does not hold yet is named in the archive and in the output,
never silently missing.

restore: MLflow's data from an archive back onto the running cluster. The archive is checked whole first; then
MLflow is stopped (its Deployment scaled to 0, its pods gone), the volume's directory is replaced on its node with
the old one kept beside it, and MLflow is started again and waited for. The project part is not written over the
project (that would replace the keys and secrets of the cluster at hand): `tar -xzf ARCHIVE project.tar` takes it.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

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
    from piml.backup.take import backup_dir, cluster_kube, fetch_scheduled
    from piml.project import ProjectPaths, load_cluster

    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    kube = cluster_kube(cluster)
    directory = backup_dir(cluster, to)
    show = (lambda line: None) if as_json else (lambda line: console().print(f"  {line}", markup=False))
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
    from piml.backup.onnode import put_back_command
    from piml.backup.take import MLFLOW_DEPLOYMENT, cluster_kube, mlflow_volume, on_node
    from piml.kube.scale import scale, wait_available, wait_stopped
    from piml.project import ProjectPaths, load_cluster

    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    with tempfile.TemporaryDirectory(prefix="piml-restore-") as scratch_dir:
        with archive.opened(Path(source), Path(scratch_dir)) as (manifest, parts):
            if "mlflow" not in parts:
                raise InputError(Problem(str(source), "holds no MLflow data", "name an archive that does"))
            _refuse_versions(manifest, cluster, str(source))
            kube = cluster_kube(cluster)
            node, path = mlflow_volume(kube, cluster)
            _confirm(yes, cluster, manifest, f"{node.name}:{path}")
            namespace = cluster.config.namespace
            show = (lambda line: None) if as_json else (lambda line: console().print(f"  {line}", markup=False))
            replicas = scale(kube, namespace, MLFLOW_DEPLOYMENT, 0)
            try:
                left = wait_stopped(kube, namespace, MLFLOW_DEPLOYMENT, time.monotonic() + STOP_TIMEOUT)
                if left:
                    raise PimlError(
                        Problem(
                            f"{namespace}/{MLFLOW_DEPLOYMENT}",
                            f"its pods did not stop within {STOP_TIMEOUT:.0f} s ({', '.join(left)}): nothing restored",
                            f"see `kubectl -n {namespace} describe pod {left[0]}`, then run piml restore again",
                        ),
                        EXIT_FAILED,
                    )
                show(f"mlflow stopped; putting {parts['mlflow'].stat().st_size} bytes back on {node.name}:{path}")
                stamp = archive.stamp()
                with open(parts["mlflow"], "rb") as data:
                    answer = on_node(cluster, node, put_back_command(path, stamp), timeout, send=data)
                kept = answer.stdout.strip()
            finally:
                scale(kube, namespace, MLFLOW_DEPLOYMENT, max(replicas, 1))
            ok, how = wait_available(kube, namespace, MLFLOW_DEPLOYMENT, time.monotonic() + START_TIMEOUT)
    result = {
        "archive": str(source),
        "created": manifest.created,
        "restored": {"mlflow": f"{node.name}:{path}"},
        "kept": kept or None,
        "mlflow": how,
        "ok": ok,
    }
    if as_json:
        print_json(result)
    else:
        if kept:
            console().print(f"  the data it replaced is kept on {node.name}: {kept}", markup=False)
        console().print(f"restored MLflow from {source} (made {manifest.created}); mlflow: {how}", markup=False)
    if not ok:
        raise PimlError(
            Problem(
                f"{namespace}/{MLFLOW_DEPLOYMENT}",
                f"not available within {START_TIMEOUT:.0f} s after the restore ({how})",
                "see `piml status`; the data is in place, and the old data is kept beside it",
            ),
            EXIT_FAILED,
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


def _confirm(yes: bool, cluster, manifest, volume: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise InputError(Problem("piml restore", "asks for confirmation, but there is no terminal to ask on",
                                 "pass --yes"))  # fmt: skip
    import typer

    question = (
        f"Replace MLflow's data in '{cluster.name}' ({volume}) with the archive's from {manifest.created}? "
        "MLflow stops meanwhile; the data it has now is kept beside it"
    )
    if not typer.confirm(question, default=False):
        console().print("nothing was changed")
        raise SystemExit(1)
