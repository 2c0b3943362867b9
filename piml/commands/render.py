"""`piml render`: the platform's manifests as files, one per component, ready for GitOps."""

from __future__ import annotations

import sys
from pathlib import Path

from piml.output import console


def run_render(project: Path | None, inventory: Path | None, out: Path | None, include_secrets: bool) -> None:
    from piml.commands.plan import load_plan
    from piml.errors import InputError, Problem
    from piml.fsutil import write_atomic
    from piml.render import render_platform

    cluster, plan = load_plan(project, inventory, reach_nodes=False)
    secrets = None
    if include_secrets:
        from piml.secrets import load_or_create

        secrets = load_or_create(cluster.paths.state)
    rendered = render_platform(cluster, plan, secrets)
    if out is None:
        sys.stdout.write("---\n".join(r.text() for r in rendered))
        return
    if out.exists() and not out.is_dir():
        raise InputError(Problem("--out", f"'{out}' is a file", "name a directory"))
    out.mkdir(parents=True, exist_ok=True)
    mode = 0o600 if include_secrets else 0o644  # files with secret values are for your eyes only
    for index, part in enumerate(rendered):
        write_atomic(out / f"{index:02d}-{part.component}.yaml", part.text(), mode=mode)
    console().print(f"wrote {len(rendered)} files to {out}" + (" (with secret values, mode 0600)" if include_secrets else ""), markup=False)
