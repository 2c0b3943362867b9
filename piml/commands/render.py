"""`piml render`: the platform's manifests as files, one per component, ready for GitOps."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from piml.output import console


def _out_dir(out: str | Path) -> Path:
    """--out as a directory to write into, refused early when it cannot be one (before anything is created)."""
    from piml.errors import InputError, Problem

    if not str(out).strip():
        raise InputError(
            Problem(
                "--out",
                "is empty",
                "name a directory, e.g. --out manifests/ (without --out the manifests go to stdout)",
            )
        )
    path = Path(out).expanduser()
    if os.path.lexists(path) and not path.is_dir():
        raise InputError(
            Problem(f"--out {path}", "is not a directory", "name a directory (it is created when missing)")
        )
    for parent in path.parents:  # the nearest existing ancestor must be a directory
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise InputError(
                    Problem(
                        f"--out {path}", f"'{parent}' is a file, not a directory", "name a place inside a directory"
                    )
                )
            break
    return path


def _inputs(cluster) -> list[Path]:
    """What `piml render` reads: the inventory, piml.yaml, the project's state (secrets, keys, kubeconfig)."""
    paths = [cluster.paths.inventory, cluster.paths.config]
    state = cluster.paths.state
    try:
        paths += [entry for entry in state.iterdir() if entry.is_file()]
    except OSError:
        pass
    for kubeconfig in os.environ.get("KUBECONFIG", "").split(os.pathsep) + [str(Path("~/.kube/config").expanduser())]:
        if kubeconfig:
            paths.append(Path(kubeconfig))
    return paths


def run_render(project: Path | None, inventory: Path | None, out: str | Path | None, include_secrets: bool) -> None:
    from piml.commands.plan import load_plan
    from piml.errors import InputError
    from piml.fsutil import make_dirs, os_error_problem, refuse_inputs, write_atomic
    from piml.render import render_platform

    out_dir = _out_dir(out) if out is not None else None
    cluster, plan = load_plan(project, inventory, reach_nodes=False)
    secrets = None
    if include_secrets:
        from piml.secrets import load_or_create

        secrets = load_or_create(cluster.paths.state)
    rendered = render_platform(cluster, plan, secrets)
    if out_dir is None:
        sys.stdout.write("---\n".join(r.text() for r in rendered))
        return
    files = [(out_dir / f"{index:02d}-{part.component}.yaml", part) for index, part in enumerate(rendered)]
    refuse_inputs([path for path, _ in files], _inputs(cluster), "--out")
    mode = 0o600 if include_secrets else 0o644  # files with secret values are for your eyes only
    where = f"--out {out_dir}"
    try:
        make_dirs(out_dir)
    except OSError as exc:
        raise InputError(os_error_problem(where, exc, "cannot create the directory")) from None
    for path, part in files:
        try:
            write_atomic(path, part.text(), mode=mode)
        except OSError as exc:
            raise InputError(os_error_problem(f"{where}", exc, f"cannot write {path.name}")) from None
    console().print(
        f"wrote {len(rendered)} files to {out_dir}" + (" (with secret values, mode 0600)" if include_secrets else ""),
        markup=False,
    )
