"""`piml up`: run the stages in order: preflight -> prepare -> k3s -> kubeconfig -> platform -> ray-external -> verify.

Nodes that fail a stage drop out of the later ones; the others carry on. The summary at the end names
every node that failed and what to do; the exit code is 1 if any did.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from piml.errors import EXIT_FAILED, InputError, PimlError, Problem
from piml.inventory.ansible import did_you_mean
from piml.output import console, print_json, terminal_safe

STAGES = ("preflight", "prepare", "k3s", "kubeconfig", "platform", "ray-external", "verify")
NODE_STAGES = ("preflight", "prepare", "k3s")


def select_stages(only: str | None, start: str | None, until: str | None) -> list[str]:
    """The stages to run. An option given but naming no stage (`--only ''` from an unset variable, `','`) is an
    error, never "all stages"; --from and --until take one stage each."""

    def named(option: str, value: str | None) -> list[str]:
        if value is None:
            return []
        words = [w.strip() for w in value.split(",") if w.strip()]
        if not words:
            raise InputError(
                Problem(
                    option,
                    f"{value!r} names no stage (an empty variable?)",
                    f"name stages: {', '.join(STAGES)}; leave {option} out to run them all",
                )
            )
        for word in words:
            if word not in STAGES:
                raise InputError(Problem(option, f"no stage '{word}'", did_you_mean(word, STAGES)))
        if option != "--only" and len(words) > 1:
            raise InputError(
                Problem(
                    option,
                    f"takes one stage, not {len(words)} ({value})",
                    "use --only A,B for some stages, or --from A --until B for a run of them",
                )
            )
        return words

    wanted, starts, ends = named("--only", only), named("--from", start), named("--until", until)
    if only is not None and (start is not None or until is not None):
        raise InputError(
            Problem("--only", "cannot be combined with --from/--until", "use either --only STAGES or --from/--until")
        )
    if wanted:
        return [s for s in STAGES if s in wanted]
    start, until = (starts or [None])[0], (ends or [None])[0]
    first = STAGES.index(start) if start else 0
    last = STAGES.index(until) if until else len(STAGES) - 1
    if first > last:
        raise InputError(
            Problem(
                "--from/--until", f"'{start}' comes after '{until}'", f"stages run in this order: {', '.join(STAGES)}"
            )
        )
    return list(STAGES[first : last + 1])


def run_up(
    project: Path | None,
    inventory: Path | None,
    only,
    start,
    until,
    limit,
    accept_new: bool,
    dry_run: bool,
    as_json: bool,
    merge: bool = True,
    print_command: bool = False,
) -> None:
    from piml.inventory import Role
    from piml.project import ProjectPaths, load_cluster
    from piml.reach import select_nodes

    stages = select_stages(only, start, until)
    cluster = load_cluster(ProjectPaths.resolve(project, inventory))
    nodes = select_nodes(cluster.inventory.nodes, limit)
    k3s_nodes = [n for n in nodes if n.role is not Role.EXTERNAL]
    if "ray-external" in stages and cluster.config.ray.enabled:  # a host that could never join: said before anything
        from piml.rayext.stage import refusals
        from piml.render.images import PYTHON

        if problems := refusals([n for n in nodes if n.role is Role.EXTERNAL], PYTHON):
            raise InputError(problems)
    if dry_run:
        _dry_run(cluster, stages, nodes, merge, as_json)
        return
    if print_command:
        _print_commands(cluster, stages, k3s_nodes, as_json)
        return
    if merge and "kubeconfig" in stages:  # a file the merge could not edit is said now, before any node changes
        from piml.k3s.kubeconfig import check_target, default_target

        check_target(default_target())

    from piml.k3s import stages as st

    show = not as_json
    summary: dict[str, object] = {}
    failed: dict[str, str] = {}  # node -> "stage: what went wrong", first failure only
    first = cluster.inventory.servers[0]
    arches: set[str] = set()
    reports = []
    if any(s in stages for s in NODE_STAGES):
        ok, rows, reports = _reach(cluster, nodes, accept_new, as_json, table="preflight" in stages)
        arches = {r.facts.arch for r in reports if r.reachable and r.facts.arch in ("arm64", "amd64")}
        if "preflight" in stages:
            summary["preflight"] = rows
            if not ok:
                _finish(
                    summary, failed, as_json, stopped="preflight failed: fix what the table says and run piml up again"
                )
        for report in reports:
            if not report.reachable and report.node.role is not Role.EXTERNAL:
                failed.setdefault(report.node.name, f"reach: {report.failure.reason}; {report.failure.fix}")
    airgap = None
    if "prepare" in stages or "k3s" in stages:
        airgap = st.check_airgap(cluster, arches)

    for stage in ("prepare", "k3s"):
        if stage not in stages:
            continue
        targets = [n for n in k3s_nodes if n.name not in failed]
        if stage == "k3s" and first.name in failed:
            summary[stage] = st.StageResult(stage, skipped=f"the first server {first.name} failed").as_dict()
            continue
        if not targets:
            summary[stage] = st.StageResult(stage, skipped="no node left to run it on").as_dict()
            continue
        if stage == "prepare":
            extravars = st.prepare_vars(cluster, airgap)
        else:
            from piml.k3s.token import cluster_token

            token, _source = cluster_token(cluster)
            extravars = st.k3s_vars(cluster, airgap, token)
        result = st.run_playbook_stage(cluster, stage, targets, extravars, show)
        summary[stage] = result.as_dict()
        for host, message in result.failures.items():
            failed.setdefault(host, f"{stage}: {message}")

    if "kubeconfig" in stages:
        if first.name in failed:
            summary["kubeconfig"] = st.StageResult(
                "kubeconfig", skipped=f"the first server {first.name} failed"
            ).as_dict()
        else:
            result = st.kubeconfig_stage(cluster, merge, show)
            summary["kubeconfig"] = result.as_dict()
            for host, message in result.failures.items():
                failed.setdefault(host, f"kubeconfig: {message}")
    if "platform" in stages:
        if failed and first.name in failed:
            summary["platform"] = {"skipped": f"the first server {first.name} failed"}
        else:
            # the k3s nodes' facts: a ray_external host (reached or not) is no part of the plan
            facts = {r.node.name: r.facts for r in reports if r.reachable and r.node.role is not Role.EXTERNAL}
            summary["platform"] = _platform(cluster, facts, as_json, failed)
    if "ray-external" in stages:
        summary["ray-external"] = _ray_external(cluster, nodes, failed, show)
    if "verify" in stages:
        if first.name in failed or "platform" in failed:
            summary["verify"] = {"skipped": "an earlier stage failed"}
        else:
            summary["verify"] = _verify(cluster, k3s_nodes, as_json, failed)
    _finish(summary, failed, as_json)


def _ray_external(cluster, nodes, failed: dict[str, str], show: bool) -> dict:
    """The selected ray_external hosts join the cluster's Ray head; one that is asleep is a warning only."""
    from piml.inventory import Role
    from piml.k3s.stages import StageResult
    from piml.rayext.head import cluster_head
    from piml.rayext.stage import STAGE, join
    from piml.secrets import load_or_create

    hosts = [n for n in nodes if n.role is Role.EXTERNAL]
    if not hosts:
        return StageResult(STAGE, skipped="no ray_external host in the inventory").as_dict()
    if not cluster.config.ray.enabled:
        return StageResult(STAGE, skipped="ray.enabled is false in piml.yaml").as_dict()
    if "platform" in failed or cluster.inventory.servers[0].name in failed:
        return StageResult(STAGE, skipped="an earlier stage failed").as_dict()
    if not cluster.paths.kubeconfig.exists():
        fix = "run the earlier stages first: piml up (or piml up --until platform)"
        raise InputError(Problem(cluster.paths.show(cluster.paths.kubeconfig), "no kubeconfig yet", fix))
    settings = cluster.config.ray.external
    try:
        with cluster_head(cluster) as (head, dashboard):
            token = load_or_create(cluster.paths.state)["ray_auth_token"]
            result = join(cluster, hosts, head, dashboard, token, show, settings.pip_args, settings.wait_timeout)
    except PimlError as exc:  # no ready head, the API unreachable: the hosts cannot join yet, the cluster is fine
        reason = "; ".join(str(problem) for problem in exc.problems)
        result = StageResult(STAGE, failures={"ray head": reason})
    for host, message in result.failures.items():
        failed.setdefault(host, f"ray-external: {message}")
    return result.as_dict()


def _verify(cluster, nodes, as_json: bool, failed: dict[str, str]) -> list[dict]:
    """`piml check` without --deep: nodes, cluster, components; each failure is one line of the summary."""
    import time

    from piml.commands.check import check_cluster
    from piml.health import report

    started = time.monotonic()
    results = check_cluster(cluster, nodes=nodes)  # the selection's k3s nodes (none: the cluster and components)
    if not as_json:
        report.show(results, time.monotonic() - started, title="verify")
    for r in results:
        if r.failed:
            failed.setdefault(r.target, f"verify {r.check}: {r.detail}" + (f"; {r.fix}" if r.fix else ""))
    return [r.as_dict() for r in results]


def _platform(cluster, facts: dict, as_json: bool, failed: dict[str, str]) -> dict:
    """Render the platform from the plan and apply it; a failure is recorded under "platform"."""
    from piml.kube.deploy import deploy
    from piml.kube.node_labels import reconcile_node_labels
    from piml.plan import make_plan
    from piml.plan.pins import read_pins
    from piml.render import render_platform
    from piml.secrets import load_or_create

    kubeconfig = cluster.paths.kubeconfig
    if not kubeconfig.exists():
        fix = "run the earlier stages first: piml up (or piml up --until kubeconfig)"
        raise InputError(Problem(cluster.paths.show(kubeconfig), "no kubeconfig yet", fix))
    try:  # which nodes the stateful services' volumes are on: the plan keeps them there (or says why it cannot)
        pins = read_pins(cluster, kubeconfig)
    except PimlError as exc:  # the API unreachable: reported like any other platform failure
        failed["platform"] = "; ".join(str(problem) for problem in exc.problems)
        return {"failed": True}
    plan = make_plan(cluster, facts if len(facts) == len(cluster.inventory.cluster_nodes) else None, pins)
    rendered = render_platform(cluster, plan, load_or_create(cluster.paths.state))
    progress = None if as_json else (lambda line: console().print(f"  platform: {line}", markup=False))
    from piml.backup.take import backup_before_mlflow_upgrade

    try:  # a new MLflow migrates its store at start, one way: a copy first, or nothing is applied
        upgrade_backup = backup_before_mlflow_upgrade(cluster, kubeconfig, progress or (lambda line: None))
    except PimlError as exc:
        problems = "; ".join(str(problem) for problem in exc.problems)
        failed["platform"] = (
            f"MLflow's version changes and the backup before it failed, so nothing was applied: {problems}"
        )
        return {"failed": True}
    try:
        # k3s applies the inventory's labels/taints only when a node registers: later changes go through the API
        labels = reconcile_node_labels(cluster, kubeconfig, progress=progress)
        failed.update({node: f"labels: {message}" for node, message in labels.failed.items() if node not in failed})
        report = deploy(cluster, kubeconfig, rendered, progress=progress)
    except PimlError as exc:  # DeployError, or the API unreachable: the summary still says what happened
        failed["platform"] = "; ".join(str(problem) for problem in exc.problems)
        report = getattr(exc, "report", None)
        return report.as_dict() if report else {"failed": True}
    if not as_json:
        from piml.render.manifests import urls

        console().print(
            f"platform: {report.created} created, {report.changed} changed, {report.unchanged} unchanged, "
            f"{len(report.pruned)} pruned in {report.seconds:.0f} s"
        )
        for name, url in urls(cluster).items():
            console().print(f"  {name}: {url}", markup=False)
    backup = {"backup_before_upgrade": str(upgrade_backup)} if upgrade_backup else {}
    return {**report.as_dict(), "node_labels": labels.as_dict(), **backup}


def _print_commands(cluster, stages: list[str], nodes, as_json: bool) -> None:
    """Each playbook stage's `ansible-playbook` command, its variables in a 0600 file; nothing is run."""
    from piml.ansible.command import playbook_command
    from piml.k3s import stages as st

    chosen = [s for s in ("prepare", "k3s") if s in stages]
    if not chosen:
        raise InputError(
            Problem(
                "--print-command",
                f"no playbook stage among {', '.join(stages)}",
                "the playbook stages are prepare and k3s: e.g. piml up --only k3s --print-command",
            )
        )
    names = [n.name for n in nodes]
    # Without the nodes' facts (nothing is reached) the architectures are the inventory's, when it says them: the
    # air-gap dir is checked for those binaries only (`piml up` checks it against the nodes' real ones)
    known = {n.arch for n in nodes if n.arch}
    airgap = st.check_airgap(cluster, known) if known else st.airgap_dir(cluster)
    commands = {}
    for stage in chosen:
        if stage == "prepare":
            extravars = st.prepare_vars(cluster, airgap)
        else:
            from piml.k3s.token import cluster_token

            extravars = st.k3s_vars(cluster, airgap, cluster_token(cluster)[0])
        commands[stage] = playbook_command(cluster, st.PLAYBOOKS[stage], names, extravars, stage)
    if as_json:
        print_json({"commands": {stage: {k: v for k, v in c.items() if k != "shell"} for stage, c in commands.items()}})
        return
    for stage, command in commands.items():
        where = cluster.paths.show(Path(command["vars_file"]))
        print(f"# {stage}: {', '.join(names)} (variables in {where}, mode 0600)")
        print(command["shell"])


def _finish(summary: dict, failed: dict[str, str], as_json: bool, stopped: str = "") -> None:
    ok = not failed and not stopped
    if as_json:
        print_json({"stages": summary, "ok": ok, "failed": failed})
    else:
        _print_summary(summary, failed)
    if stopped:
        raise PimlError(Problem("piml up", stopped), EXIT_FAILED)
    if failed:
        problems = [Problem(node, message, "") for node, message in failed.items()]
        problems.append(
            Problem(
                "piml up",
                f"failed on {', '.join(failed)}",
                "fix what is said above, then run piml up again (what succeeded is not changed again)",
            )
        )
        raise PimlError(problems, EXIT_FAILED)


def _print_summary(summary: dict, failed: dict[str, str]) -> None:
    from rich.table import Table

    # preflight has its own table and platform its own line; the rest are per-host Ansible counts
    rows = [
        (stage, data)
        for stage, data in summary.items()
        if stage not in ("preflight", "platform") and isinstance(data, dict)
    ]
    if not rows:
        if failed:
            console().print(f"[red]failed:[/] {', '.join(failed)}")
        return
    table = Table(title="piml up", title_justify="left")
    for column in ("stage", "nodes", "ok", "changed", "failed", "unreachable", "seconds"):
        table.add_column(column, justify="left" if column in ("stage",) else "right")
    for stage, data in rows:
        if data.get("skipped"):
            table.add_row(stage, "-", "-", "-", "-", "-", f"skipped: {data['skipped']}")
            continue
        hosts = data["hosts"].values()
        total = {k: sum(h.get(k, 0) for h in hosts) for k in ("ok", "changed", "failed", "unreachable")}
        table.add_row(
            stage,
            str(len(data["hosts"])),
            str(total["ok"]),
            str(total["changed"]),
            f"[red]{total['failed']}[/]" if total["failed"] else "0",
            f"[red]{total['unreachable']}[/]" if total["unreachable"] else "0",
            f"{data['seconds']:.1f}",
        )
    console().print(table)
    console().print("[green]all stages ok[/]" if not failed else f"[red]failed:[/] {', '.join(failed)}")


def _dry_run(cluster, stages: list[str], nodes, merge: bool, as_json: bool) -> None:
    from piml.k3s.stages import describe

    plan = {}
    capacity = None
    for stage in stages:
        if stage == "preflight":
            plan[stage] = [
                f"{n.name}: connect to {n.user or 'ssh'}@{n.address}, gather facts (read-only)" for n in nodes
            ]
        elif stage == "platform":
            capacity, plan[stage] = _platform_dry_run(cluster)
        elif stage == "ray-external":
            from piml.rayext.stage import describe as describe_external

            plan[stage] = describe_external(cluster, nodes) or ["no ray_external host in the inventory"]
        elif stage == "verify":
            plan[stage] = [
                "nodes: k3s service running and enabled, API port on servers, memory cgroup, throttling (one facts round trip over SSH per node)",
                "cluster: every node Ready without pressure, every workload ready, KEDA serving metrics",
                "components: MLflow health and an authenticated call, Dask workers, Ray resources, the queue broker",
            ]
        else:
            plan[stage] = describe(cluster, stage, nodes, merge)
    if as_json:
        print_json({"dry_run": True, "stages": plan, "plan": capacity.as_dict() if capacity else None})
        return
    for stage in stages:
        console().print(f"[bold]{stage}[/]")
        if stage == "platform" and capacity is not None:
            from piml.commands.plan import show_plan

            show_plan(cluster, capacity)
        for line in plan[stage]:
            console().print(f"  {line}", markup=False)
    console().print("(dry run: nothing was touched; `piml render --out DIR` writes the manifests)")


def _platform_dry_run(cluster):
    """The capacity plan (from the inventory: a dry run reaches nothing) and what would be applied."""
    from piml.plan import make_plan
    from piml.render import render_platform

    try:
        plan = make_plan(cluster)
    except InputError as exc:  # e.g. memory unknown until the nodes are reached: say so, plan the rest
        return None, [f"cannot plan yet: {p}" for p in exc.problems]
    lines = []
    for part in render_platform(cluster, plan, None):
        kinds = ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in part.objects)
        lines.append(f"apply {part.component}: {kinds}")
    return plan, lines


def _reach(cluster, nodes, accept_new: bool, as_json: bool, table: bool):
    """Reach every node (one SSH round trip each); with `table`, check and print preflight. ray_external hosts
    are not waited for (OUTSIDE_GRACE_S after the k3s nodes at most) and never stop the stages: preflight warns."""
    from piml.preflight import FAIL, preflight
    from piml.reach import OUTSIDE_GRACE_S, reach

    busy = console().status(f"reaching {len(nodes)} nodes") if not as_json and console().is_terminal else nullcontext()
    with busy:
        reports = reach(cluster, nodes, accept_new, outside_grace=OUTSIDE_GRACE_S)
    if not table:
        return True, [], reports
    checks = preflight(reports, cluster.config, ha=len(cluster.inventory.servers) > 1)
    if not as_json:
        render_checks(checks)
    return not any(c.status == FAIL for c in checks), [c.as_dict() for c in checks], reports


def render_checks(checks) -> None:
    from rich.table import Table
    from rich.text import Text

    style = {"pass": "green", "warn": "yellow", "fail": "bold red"}
    table = Table(title="preflight", title_justify="left")
    for column in ("node", "check", "result", "detail", "fix"):
        table.add_column(column, overflow="fold")
    for c in checks:
        # a node's answers are outside text: never rich markup, never terminal escapes
        table.add_row(
            c.node,
            c.name,
            f"[{style[c.status]}]{c.status}[/]",
            Text(terminal_safe(c.detail)),
            Text(terminal_safe(c.fix)),
        )
    console().print(table)
    counts = {s: sum(c.status == s for c in checks) for s in style}
    console().print(f"preflight: {counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail")
