"""`piml backup` and `piml restore`.

backup: the project (inventory, piml.yaml, .piml/), a single server's k3s datastore (SQLite, and the token) and
MLflow's volume (its SQLite stores copied online, its artifacts), each taken over SSH from the node that holds it,
into one archive (piml/backup/archive.py). restore puts back MLflow's data only: the datastore goes back with k3s
stopped, by hand (README, Backups).
What it does not hold yet is named in the archive and in the output, never silently missing.

restore: MLflow's data from an archive back onto the running cluster. The archive is checked whole first; then
MLflow is stopped (its Deployment scaled to 0, its pods gone), the volume's directory is replaced on its node with
the old one kept beside it, and MLflow is started again and waited for. The project part is not written over the
project (that would replace the keys and secrets of the cluster at hand): `tar -xzf ARCHIVE project.tar` takes it.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from piml.errors import EXIT_FAILED, InputError, PimlError, Problem
from piml.output import console, print_json

MLFLOW_CLAIM = "mlflow-data"
MLFLOW_DEPLOYMENT = "mlflow"
# A single server keeps the cluster in SQLite (kine, WAL mode); a snapshot is unusable without the token, which
# encrypts its secrets (https://docs.k3s.io/datastore/backup-restore).
K3S_SERVER_DIR = "/var/lib/rancher/k3s/server"
K3S_DATASTORE = ("db/state.db", "token")
STOP_TIMEOUT = 120.0  # MLflow's pods gone after scaling to 0
START_TIMEOUT = 300.0  # MLflow available again (a Pi pulls nothing: the image is there)


def run_backup(project: Path | None, inventory: Path | None, to: Path | None, timeout: float, as_json: bool) -> None:
    from piml import __version__
    from piml.backup import archive
    from piml.fsutil import make_private_dir, os_error_problem
    from piml.project import ProjectPaths, load_cluster

    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    directory = Path(to) if to else cluster.paths.root / "backups"
    try:
        if not directory.exists():
            make_private_dir(directory)
    except OSError as exc:
        raise InputError(os_error_problem(f"--to {directory}", exc, "cannot make the backup directory")) from None
    if not directory.is_dir():
        raise InputError(Problem(f"--to {directory}", "is not a directory", "name a directory for the archive"))
    kube = _kube(cluster)
    mlflow_version = _running_mlflow(kube, cluster) or cluster.config.mlflow.version
    manifest = archive.Manifest(
        project=cluster.name,
        created=datetime.now(UTC).replace(microsecond=0).isoformat(),
        versions={"piml": __version__, "mlflow": mlflow_version, "k3s": cluster.config.k3s.version},
        left_out=_left_out(cluster),
    )
    show = (lambda line: None) if as_json else (lambda line: console().print(f"  {line}", markup=False))
    with tempfile.TemporaryDirectory(prefix=".piml-backup-", dir=directory) as scratch_dir:
        scratch = Path(scratch_dir)
        parts = {archive.PROJECT_PART: scratch / "project.tar"}
        archive.write_project_part(cluster.paths.root, parts[archive.PROJECT_PART], leave_out=directory)
        show(f"project: {cluster.paths.show(cluster.paths.root)} (inventory, piml.yaml, .piml/)")
        if "k3s datastore" not in manifest.left_out:
            first = cluster.inventory.servers[0]
            parts["k3s"] = scratch / "k3s.tar"
            _take(cluster, first, K3S_SERVER_DIR, parts["k3s"], timeout, only=K3S_DATASTORE)
            manifest.parts["k3s"] = {"node": first.name, "path": K3S_SERVER_DIR, "datastore": "sqlite"}
            show(f"k3s datastore: {first.name}:{K3S_SERVER_DIR}/{{{','.join(K3S_DATASTORE)}}}")
        if "mlflow" not in manifest.left_out:
            node, path = _mlflow_volume(kube, cluster)
            parts["mlflow"] = scratch / "mlflow.tar"
            _take(cluster, node, path, parts["mlflow"], timeout)
            manifest.parts["mlflow"] = {"claim": MLFLOW_CLAIM, "node": node.name, "path": path}
            show(f"mlflow: {node.name}:{path} ({parts['mlflow'].stat().st_size} bytes)")
        try:
            final = archive.write_archive(directory, manifest, parts)
        except OSError as exc:
            raise PimlError(os_error_problem(str(directory), exc, "cannot write the archive"), EXIT_FAILED) from None
    if as_json:
        print_json({"archive": str(final), "manifest": manifest.as_dict(), "ok": True})
        return
    for what, why in manifest.left_out.items():
        console().print(f"  not in this backup: {what}: {why}", markup=False)
    console().print(f"backup: {cluster.paths.show(final)} (mode 0600, sha256 in {final.name}.sha256)", markup=False)


def run_restore(
    project: Path | None, inventory: Path | None, source: Path, yes: bool, timeout: float, as_json: bool
) -> None:
    from piml.backup import archive
    from piml.backup.onnode import put_back_command
    from piml.kube.scale import scale, wait_available, wait_stopped
    from piml.project import ProjectPaths, load_cluster

    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    with tempfile.TemporaryDirectory(prefix="piml-restore-") as scratch_dir:
        with archive.opened(Path(source), Path(scratch_dir)) as (manifest, parts):
            if "mlflow" not in parts:
                raise InputError(Problem(str(source), "holds no MLflow data", "name an archive that does"))
            _refuse_versions(manifest, cluster, str(source))
            kube = _kube(cluster)
            node, path = _mlflow_volume(kube, cluster)
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
                    answer = _ssh(cluster, node, put_back_command(path, stamp), timeout, send=data)
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


# -- the parts ------------------------------------------------------------------------------------------


def _left_out(cluster) -> dict[str, str]:
    """What this backup cannot take yet, each with why: said in the archive and in the output."""
    mlflow = cluster.config.mlflow
    left = {"queue": "not taken yet: queued requests wait in Redis or RabbitMQ and are not in this archive"}
    if len(cluster.inventory.servers) > 1:
        left["k3s datastore"] = (
            "HA servers keep it in embedded etcd, which piml does not snapshot yet: run `sudo k3s etcd-snapshot "
            f"save` on a server and keep {K3S_SERVER_DIR}/token with it (https://docs.k3s.io/cli/etcd-snapshot)"
        )
    if not mlflow.enabled:
        left["mlflow"] = "mlflow.enabled is false"
    elif mlflow.backend != "sqlite" or mlflow.backend_uri:
        left["mlflow"] = "its PostgreSQL backend store is not taken by piml yet: use pg_dump"
    elif mlflow.artifacts != "pvc":
        left["mlflow artifacts"] = f"they are in {mlflow.artifacts}, outside the MLflow volume: back that up there"
    return left


def _kube(cluster):
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


def _running_mlflow(kube, cluster) -> str | None:
    """The MLflow version the cluster runs, from its Deployment's image tag (what made the data)."""
    from piml.kube.objects import dig

    live = kube.get(f"/apis/apps/v1/namespaces/{cluster.config.namespace}/deployments/{MLFLOW_DEPLOYMENT}")
    for container in dig(live or {}, "spec", "template", "spec", "containers", default=[]):
        found = re.search(r":v?(\d+\.\d+\.\d+)$", container.get("image", ""))
        if container.get("name") == "mlflow" and found:
            return found.group(1)
    return None


def _mlflow_volume(kube, cluster):
    """(inventory node, directory) of MLflow's volume: the node that holds it, and where."""
    from piml.kube.volumes import claim_volume

    namespace = cluster.config.namespace
    found = claim_volume(kube, namespace, MLFLOW_CLAIM)
    if found is None:
        raise PimlError(
            Problem(
                f"{namespace}/{MLFLOW_CLAIM}",
                "MLflow's volume is not a bound local-path volume on one node",
                "run `piml up` so MLflow runs (piml backs up local-path volumes over SSH)",
            ),
            EXIT_FAILED,
        )
    name, path = found
    nodes = {n.name: n for n in cluster.inventory.nodes}
    if name not in nodes:
        raise PimlError(
            Problem(
                f"{namespace}/{MLFLOW_CLAIM}",
                f"its volume is on node {name}, which is not in the inventory",
                f"add {name} to inventory/hosts.yml, so piml can reach it over SSH",
            ),
            EXIT_FAILED,
        )
    return nodes[name], path


def _take(cluster, node, path: str, out: Path, timeout: float, only: tuple[str, ...] = ()) -> None:
    from piml.backup.onnode import snapshot_command

    with open(out, "wb") as sink:
        _ssh(cluster, node, snapshot_command(path, only), timeout, receive=sink)


def _ssh(cluster, node, command: str, timeout: float, send=None, receive=None):
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
