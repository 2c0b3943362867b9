"""`piml init`: scaffold a project, from --node options or by asking."""

from __future__ import annotations

import sys
from pathlib import Path

from piml.errors import InputError, Problem
from piml.output import console
from piml.scaffold import NodeSpec, init_project, parse_node_spec


def _ask_nodes() -> list[NodeSpec]:
    """Ask for nodes one per line until an empty line; re-ask on a bad entry."""
    import typer

    console().print("Enter the nodes as NAME=ADDRESS[:ROLE] (ROLE: server, agent, external), an empty line to finish.")
    specs: list[NodeSpec] = []
    for _ in range(200):  # bounded: nobody types 200 nodes by hand
        text = typer.prompt(f"node {len(specs) + 1}", default="", show_default=False).strip()
        if not text:
            break
        try:
            specs.append(parse_node_spec(text))
        except InputError as exc:
            console().print(f"  {exc.problems[0].what}; {exc.problems[0].fix}", markup=False)
    return specs


def run_init(
    directory: Path | None,
    nodes: list[str],
    user: str | None,
    ssh_key: Path | None,
    model: str | None,
    force: bool,
    memory_gb: float | None = None,
    project: Path | None = None,
    yes: bool = False,
) -> None:
    if directory is not None and project is not None and Path(directory).resolve() != Path(project).resolve():
        raise InputError(
            Problem(
                "piml init",
                f"two project directories given: {directory} and -C {project}",
                "give the directory once, as DIRECTORY or with -C",
            )
        )
    directory = directory or project or Path.cwd()
    if nodes:
        specs = [parse_node_spec(text) for text in nodes]
    elif yes:  # asked not to ask: the nodes are the one thing init cannot default
        raise InputError(
            Problem(
                "piml init",
                "--yes and no --node: there is nothing to ask and no node to write",
                "pass --node NAME=ADDRESS[:ROLE] (repeatable)",
            )
        )
    else:
        import typer

        try:
            if user is None:
                user = typer.prompt("SSH user on the nodes", default="pi")
            specs = _ask_nodes()
        except (EOFError, typer.Abort):  # no terminal, or stdin closed
            specs = []
        if not specs:
            raise InputError(
                Problem(
                    "piml init",
                    "no nodes given",
                    "pass --node NAME=ADDRESS[:ROLE] (repeatable), or run it in a terminal and enter them",
                )
            )
    written = init_project(Path(directory), specs, user or "pi", ssh_key, model, force, memory_gb)
    shown = directory if str(directory) != "." else Path.cwd().name
    console().print(f"Created project [bold]{shown}[/]:")
    for path in written:
        console().print(f"  {path}", markup=False)
    hint = f" -C {directory}" if Path(directory).resolve() != Path.cwd().resolve() else ""
    console().print(f"Next: check it with `piml inventory show{hint}`.", markup=False)
    sys.stdout.flush()
