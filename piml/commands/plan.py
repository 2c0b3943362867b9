"""`piml plan`: where each platform component runs, how big it is, and what is left for work."""

from __future__ import annotations

from pathlib import Path

from piml.output import console, print_json
from piml.plan.quantities import fmt_cpu, fmt_memory


def load_plan(
    project: Path | None,
    inventory: Path | None,
    reach_nodes: bool,
    accept_new: bool = False,
    volumes_required: bool = True,
):
    """The cluster and its plan: from facts when asked to reach the nodes, else from the inventory.

    Once the cluster exists (.piml/kubeconfig), the stateful services stay on the nodes their volumes are on
    (piml/plan/pins.py). If its API does not answer: an error (exit 1) when `volumes_required` (`piml render`,
    whose files would otherwise move them), else the plan is made without and its notes say so (`piml plan`)."""
    from dataclasses import replace

    from piml.errors import EXIT_FAILED, PimlError, Problem
    from piml.plan import make_plan
    from piml.plan.pins import read_pins
    from piml.project import ProjectPaths, load_cluster

    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    facts = None
    if reach_nodes:
        from piml.reach import reach

        reports = reach(cluster, list(cluster.inventory.cluster_nodes), accept_new)
        down = [r for r in reports if not r.reachable]
        if down:
            raise PimlError(
                [Problem(r.node.name, str(r.failure)) for r in down]
                + [
                    Problem(
                        "piml plan",
                        "cannot plan from facts while nodes are unreachable",
                        "fix them, or plan from the inventory without --reach",
                    )
                ],
                EXIT_FAILED,
            )
        facts = {r.node.name: r.facts for r in reports}
    note = None
    try:
        pins = read_pins(cluster)
    except PimlError as exc:
        if volumes_required:
            raise PimlError(
                [
                    *exc.problems,
                    Problem(
                        "piml",
                        "cannot tell which nodes the platform's volumes are on",
                        "start the cluster (piml status says what is down) and run this again",
                    ),
                ],
                EXIT_FAILED,
            ) from None
        pins, note = (
            {},
            (
                f"the cluster could not be asked ({exc.problems[0]}): this plan does not know which nodes the "
                "volumes of MLflow, Redis & co are on; piml up checks that before it applies anything"
            ),
        )
    plan = make_plan(cluster, facts, pins)
    return cluster, (replace(plan, notes=(*plan.notes, note)) if note else plan)


def show_plan(cluster, plan) -> None:
    from rich.table import Table

    from piml.render.manifests import urls

    table = Table(title="capacity plan (requests / limits)", title_justify="left")
    for column in ("node", "arch", "allocatable", "components", "requested", "free for work"):
        table.add_column(column)
    for node in plan.nodes:
        here = [p for p in plan.services if p.node == node.name]
        components = [
            f"{p.component} {fmt_cpu(p.size.cpu_request)}/{fmt_memory(p.size.memory_request)}"
            f" ≤ {fmt_cpu(p.size.cpu_limit)}/{fmt_memory(p.size.memory_limit)}"
            + (f" (pinned: volume {p.pinned_by})" if p.pinned_by else "")
            for p in here
        ]
        k3s = [s for s in plan.system if s.node == node.name]
        if k3s:
            components.append(
                f"k3s's pods ({', '.join(s.name for s in k3s)}) {fmt_cpu(sum(s.cpu_request for s in k3s))}/"
                f"{fmt_memory(sum(s.memory_request for s in k3s))}"
            )
        cpu, memory = plan.used(node.name)
        r = node.reservation
        allocatable = (
            f"{fmt_cpu(node.cpu)} CPU, {fmt_memory(node.memory)}\n(of {fmt_cpu(node.total_cpu)}, {fmt_memory(node.total_memory)}; "
            f"reserved {fmt_cpu(r.cpu)}, {fmt_memory(r.memory)})"
        )
        table.add_row(
            node.name,
            node.arch,
            allocatable,
            ", ".join(components) or "-",
            f"{fmt_cpu(cpu)}, {fmt_memory(memory)}",
            f"{fmt_cpu(node.cpu - cpu)} CPU, {fmt_memory(node.memory - memory)}",
        )
    console().print(table)
    say = lambda text: console().print(text, markup=False)  # noqa: E731
    for role, reserved in sorted({node.role: node.reservation for node in plan.nodes}.items()):
        say(f"kept from pods on each {role} (kubelet-arg in its k3s config): {' '.join(reserved.kubelet_args())}")
    for pool in plan.dask_workers:
        say(
            f"dask workers ({pool.arch}): {pool.replicas} × {fmt_cpu(pool.size.cpu_request)} CPU, {fmt_memory(pool.size.memory_request)} (always running)"
        )
    for pool in plan.serve_workers:
        say(
            f"serving replicas ({pool.arch}): up to {pool.replicas} × {fmt_cpu(pool.size.cpu_request)} CPU, "
            f"{fmt_memory(pool.size.memory_request)} (a pod each; room kept for every route's max_replicas)"
        )
    if plan.serve_workers:
        from piml.serve.apps import CHECK_REPLICAS, CHECK_ROUTE

        for name, route in cluster.config.serve.routes.items():
            say(
                f"route {name}: {route.model}, {route.min_replicas} to {route.max_replicas} replicas of "
                f"{route.cpu} CPU, {route.memory}, batches of up to {route.batch_size}"
            )
        say(
            f"route {CHECK_ROUTE}: the model `piml check --deep` registers, 0 to {CHECK_REPLICAS} replica "
            "(while the check runs)"
        )
    if plan.split:
        s = plan.split
        say(
            f"left for work after the services, k3s's pods, the Dask workers and serving, split {s.ray:.0%} Ray workers / {s.queue:.0%} queue Jobs: "
            f"Ray {fmt_cpu(s.ray_cpu)} CPU, {fmt_memory(s.ray_memory)}; queue {fmt_cpu(s.queue_cpu)} CPU, {fmt_memory(s.queue_memory)}"
        )
    for pool in plan.ray_workers:
        say(
            f"ray workers ({pool.arch}): 0 to {pool.replicas} × {fmt_cpu(pool.size.cpu_request)} CPU, {fmt_memory(pool.size.memory_request)} (autoscaled)"
        )
    if cluster.config.ray.enabled:
        from piml.rayext.stage import offer

        for host in cluster.inventory.external:
            say(f"ray outside the cluster: {host.name} ({host.address}): {offer(host)} (ray_external: joins the head)")
    if plan.runner:
        say(
            f"queue jobs: up to {plan.max_jobs} at once × {fmt_cpu(plan.runner.cpu_request)} CPU, {fmt_memory(plan.runner.memory_request)}"
        )
    say(
        f"platform services request {fmt_memory(plan.services_memory)}, k3s's own pods {fmt_memory(plan.system_memory)}; "
        f"{plan.workload_share:.0%} of the boards' memory is left for work"
    )
    for pin in plan.pins:
        say(f"{pin.component} stays on {pin.node}: its volume ({pin.claim}) is there")
    for note in plan.notes:
        console().print(f"[yellow]note:[/] {note}", highlight=False)
    for name, url in urls(cluster).items():
        say(f"{name}: {url}")


def run_plan(project: Path | None, inventory: Path | None, reach_nodes: bool, accept_new: bool, as_json: bool) -> None:
    cluster, plan = load_plan(project, inventory, reach_nodes, accept_new, volumes_required=False)
    if as_json:
        from piml.render.manifests import urls

        outside = [
            {"name": n.name, "address": n.address, **n.ray.as_dict()}
            for n in cluster.inventory.external
            if n.ray is not None and cluster.config.ray.enabled
        ]
        print_json({**plan.as_dict(), "ray_external": outside, "urls": urls(cluster)})
    else:
        show_plan(cluster, plan)
