"""`piml plan`: where each platform component runs, how big it is, and what is left for work."""

from __future__ import annotations

from pathlib import Path

from piml.output import console, print_json
from piml.plan.quantities import fmt_cpu, fmt_memory


def load_plan(project: Path | None, inventory: Path | None, reach_nodes: bool, accept_new: bool = False):
    """The cluster and its plan: from facts when asked to reach the nodes, else from the inventory."""
    from piml.errors import EXIT_FAILED, PimlError, Problem
    from piml.plan import make_plan
    from piml.project import ProjectPaths, load_cluster

    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    facts = None
    if reach_nodes:
        from piml.reach import reach

        reports = reach(cluster, list(cluster.inventory.cluster_nodes), accept_new)
        down = [r for r in reports if not r.reachable]
        if down:
            raise PimlError([Problem(r.node.name, str(r.failure)) for r in down] + [Problem("piml plan", "cannot plan from facts while nodes are unreachable", "fix them, or plan from the inventory without --reach")], EXIT_FAILED)
        facts = {r.node.name: r.facts for r in reports}
    return cluster, make_plan(cluster, facts)


def show_plan(cluster, plan) -> None:
    from rich.table import Table

    from piml.render.manifests import urls

    table = Table(title="capacity plan (requests / limits)", title_justify="left")
    for column in ("node", "arch", "allocatable", "components", "requested", "free for work"):
        table.add_column(column)
    for node in plan.nodes:
        here = [p for p in plan.services if p.node == node.name]
        components = ", ".join(f"{p.component} {fmt_cpu(p.size.cpu_request)}/{fmt_memory(p.size.memory_request)}"
                               f" ≤ {fmt_cpu(p.size.cpu_limit)}/{fmt_memory(p.size.memory_limit)}" for p in here) or "-"
        cpu, memory = plan.used(node.name)
        table.add_row(node.name, node.arch, f"{fmt_cpu(node.cpu)} CPU, {fmt_memory(node.memory)}", components,
                      f"{fmt_cpu(cpu)}, {fmt_memory(memory)}", f"{fmt_cpu(node.cpu - cpu)} CPU, {fmt_memory(node.memory - memory)}")
    console().print(table)
    for pool in plan.dask_workers:
        console().print(f"dask workers ({pool.arch}): {pool.replicas} × {fmt_cpu(pool.size.cpu_request)} CPU, {fmt_memory(pool.size.memory_request)}")
    for pool in plan.ray_workers:
        console().print(f"ray workers ({pool.arch}): 0 to {pool.replicas} × {fmt_cpu(pool.size.cpu_request)} CPU, {fmt_memory(pool.size.memory_request)} (autoscaled)")
    if plan.runner:
        console().print(f"queue jobs: up to {plan.max_jobs} at once × {fmt_cpu(plan.runner.cpu_request)} CPU, {fmt_memory(plan.runner.memory_request)}")
    console().print(f"platform services request {fmt_memory(plan.services_memory)}; "
                    f"{plan.workload_share:.0%} of the boards' memory is left for work")
    for note in plan.notes:
        console().print(f"[yellow]note:[/] {note}")
    for name, url in urls(cluster).items():
        console().print(f"{name}: {url}", markup=False)


def run_plan(project: Path | None, inventory: Path | None, reach_nodes: bool, accept_new: bool, as_json: bool) -> None:
    cluster, plan = load_plan(project, inventory, reach_nodes, accept_new)
    if as_json:
        from piml.render.manifests import urls

        print_json({**plan.as_dict(), "urls": urls(cluster)})
    else:
        show_plan(cluster, plan)
