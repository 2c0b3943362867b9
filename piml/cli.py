"""The `piml` command line, run by piml.entry (which turns errors into one line). Only typer is imported at
start: each command imports what it needs, so `piml --help` stays fast (kubernetes, ansible_runner, fabric,
jinja2 load only where used)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from piml import __version__

app = typer.Typer(
    name="piml",
    help="Turn Raspberry Pi 5 / CM4 boards into a verified ML platform: k3s, MLflow, Dask, Ray and a job queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rich's help renderer would double start-up time
    context_settings={"help_option_names": ["-h", "--help"]},
)
inventory_app = typer.Typer(help="Show and check the inventory.", no_args_is_help=True)
app.add_typer(inventory_app, name="inventory")
node_app = typer.Typer(help="Add a board to the cluster, or retire one.", no_args_is_help=True)
app.add_typer(node_app, name="node")
serve_app = typer.Typer(help="Online serving: the routes, predictions, reloads.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")

ProjectOpt = Annotated[
    Path | None,
    typer.Option("--project", "-C", help="Project directory [default: current directory].", show_default=False),
]
InventoryOpt = Annotated[
    Path | None,
    typer.Option(
        "--inventory", "-i", help="Inventory file [default: PROJECT/inventory/hosts.yml].", show_default=False
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for programs instead of tables.")]


def _version(value: bool) -> None:
    if value:
        print(f"piml {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Turn Raspberry Pi 5 / CM4 boards into a verified ML platform.

    \b
    Start here:  piml init myrack --node pi1=192.168.1.21 --node pi2=192.168.1.22
    """


@app.command()
def init(
    directory: Annotated[
        Path | None,
        typer.Argument(help="Where to create the project [default: -C or the current directory].", show_default=False),
    ] = None,
    node: Annotated[
        list[str] | None,
        typer.Option(
            "--node",
            "-n",
            help="NAME=ADDRESS[:ROLE], repeatable. ROLE: server | agent | external; default: first node server, rest agents.",
            show_default=False,
        ),
    ] = None,
    user: Annotated[
        str | None, typer.Option("--user", "-u", help="SSH user on the nodes [default: pi].", show_default=False)
    ] = None,
    ssh_key: Annotated[
        Path | None,
        typer.Option(
            "--ssh-key", help="Use this existing private key instead of making a new one.", show_default=False
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Board model of every node: pi5 | cm4 | other.", show_default=False)
    ] = None,
    memory_gb: Annotated[
        float | None,
        typer.Option(
            "--memory-gb",
            help="RAM of every board in GB, for planning before the nodes are reached.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Rewrite an existing project's inventory and piml.yaml (old ones kept as .bak, then .bak.2, .bak.3 ...; the SSH key is kept).",
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Never ask: the user defaults to pi, and --node is required.")
    ] = False,
    project: ProjectOpt = None,
) -> None:
    """Create a project: inventory/hosts.yml, piml.yaml and .piml/ with an SSH key pair.

    Without --node, asks for the nodes one by one (not with --yes).

    \b
    Examples:
      piml init myrack --model pi5 --memory-gb 8 --node pi1=192.168.1.21 --node pi2=192.168.1.22 --node pi3=192.168.1.23
      piml init myrack --node cp=10.0.0.2:server --node pi1=10.0.0.11 --node mac=10.0.0.50:external
      piml init . --user ubuntu --ssh-key ~/.ssh/id_ed25519 --model cm4 --node cm1=cm1.lan
    """
    from piml.commands.init import run_init

    run_init(directory, node or [], user, ssh_key, model, force, memory_gb, project, yes)


@inventory_app.command("show")
def inventory_show(project: ProjectOpt = None, inventory: InventoryOpt = None, json: JsonOpt = False) -> None:
    """List the nodes: name, address, role, user, model, labels.

    \b
    Examples:
      piml inventory show
      piml inventory show -i ~/k3s-ansible/inventory.yml --json
    """
    from piml.commands.inventory import show

    show(project, inventory, json)


@inventory_app.command("check")
def inventory_check(project: ProjectOpt = None, inventory: InventoryOpt = None, json: JsonOpt = False) -> None:
    """Validate the inventory and piml.yaml; exit 0 if good, 2 with every problem listed.

    \b
    Examples:
      piml inventory check
      piml inventory check -C myrack
    """
    from piml.commands.inventory import check

    check(project, inventory, json)


@app.command()
def flash(
    image: Annotated[
        str | None,
        typer.Argument(
            help="A .img, .img.xz, .img.gz, .img.zst or .zip file, or an https:// URL (with --sha256).",
            show_default=False,
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Argument(help="The whole disk to write, e.g. /dev/sdb or /dev/mmcblk0 (see --list).", show_default=False),
    ] = None,
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            "-n",
            help="Customise the first boot for this inventory node: hostname, user + project SSH key, network, cgroup flags.",
            show_default=False,
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before overwriting the disk.")] = False,
    list_disks: Annotated[bool, typer.Option("--list", help="List the disks that could be flashed, and exit.")] = False,
    json: JsonOpt = False,
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="Expected SHA-256 of IMAGE (required for a URL).", show_default=False)
    ] = None,
    unmount: Annotated[
        bool, typer.Option("--unmount", help="Unmount the disk's mounted partitions first instead of refusing.")
    ] = False,
    allow_fixed: Annotated[
        bool, typer.Option("--allow-fixed", help="Allow a non-removable disk (an internal NVMe or SATA drive).")
    ] = False,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip reading the disk back to compare.")] = False,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Write an image file (with --all: a directory, one NODE.img each) instead of a disk. Never the IMAGE itself; an existing file only with --force.",
            show_default=False,
        ),
    ] = None,
    all_nodes: Annotated[
        bool, typer.Option("--all", help="With --output DIR: one customised image per inventory node.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="With --output: replace existing image files.")] = False,
    cm4: Annotated[
        bool,
        typer.Option("--cm4", help="Flash a Compute Module 4's eMMC: runs rpiboot and waits for the eMMC to appear."),
    ] = False,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
) -> None:
    """Write an OS image to a card, NVMe or eMMC, set up for a node's first boot, and verify it.

    Refuses the system disk, mounted disks (see --unmount), fixed disks (see --allow-fixed) and disks
    too small; asks before writing unless -y. Wi-Fi (piml.yaml flash.wifi_ssid) takes its passphrase
    from $PIML_WIFI_PASSPHRASE, .piml/wifi-passphrase (mode 0600) or a prompt; it is never printed.
    An image file holding the Wi-Fi key is created mode 0600.

    \b
    Examples:
      piml flash --list
      sudo piml flash 2025-11-24-raspios-bookworm-arm64-lite.img.xz /dev/sdb --node pi1
      sudo piml flash https://example.org/raspios.img.xz --sha256 3f2a...e9 /dev/mmcblk0 --node pi2 -y
      piml flash raspios.img.xz --output pi3.img --node pi3
      piml flash raspios.img.xz --all --output images/
      sudo piml flash ubuntu-24.04-preinstalled-server-arm64+raspi.img.xz --cm4 --node cm1
    """
    from piml.commands.flash import Options, run

    run(
        Options(
            image=image,
            device=device,
            node=node,
            yes=yes,
            list_disks=list_disks,
            json=json,
            sha256=sha256,
            unmount=unmount,
            allow_fixed=allow_fixed,
            verify=not no_verify,
            output=output,
            all_nodes=all_nodes,
            force=force,
            cm4=cm4,
            project=project,
            inventory=inventory,
        )
    )


LimitOpt = Annotated[
    str | None,
    typer.Option(
        "--limit", "-l", help="Only these nodes: NAME[,NAME] or a group (server, agent, external).", show_default=False
    ),
]
AcceptKeysOpt = Annotated[
    bool,
    typer.Option(
        "--accept-new-host-keys", help="Trust and record the host keys of nodes not seen before (.piml/known_hosts)."
    ),
]


@app.command()
def up(
    only: Annotated[
        str | None, typer.Option("--only", help="Run only these stages (comma-separated).", show_default=False)
    ] = None,
    start: Annotated[str | None, typer.Option("--from", help="Start at this stage.", show_default=False)] = None,
    until: Annotated[str | None, typer.Option("--until", help="Stop after this stage.", show_default=False)] = None,
    limit: LimitOpt = None,
    accept_new_host_keys: AcceptKeysOpt = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what each stage would do per node; touch nothing.")
    ] = False,
    print_command: Annotated[
        bool,
        typer.Option(
            "--print-command",
            help=(
                "Print the ansible-playbook command of each playbook stage (prepare, k3s), its variables written to "
                ".piml/vars-STAGE.json (0600); run nothing."
            ),
        ),
    ] = False,
    no_merge: Annotated[
        bool,
        typer.Option(
            "--no-merge", help="Keep the kubeconfig in .piml/kubeconfig only; do not merge it into ~/.kube/config."
        ),
    ] = False,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
    json: JsonOpt = False,
) -> None:
    """Bring the cluster up, stage by stage: preflight, prepare, k3s, kubeconfig, platform, verify.

    preflight reaches every node over SSH, gathers its facts in one round trip and checks it
    against what k3s and the platform need: pass / warn / fail with the fix. prepare readies the OS
    (hostname, memory cgroup, 4 KB pages on a Pi 5, swap, sysctls; reboots only if needed), k3s
    installs the pinned k3s (servers, then agents), kubeconfig stores .piml/kubeconfig and merges it
    into ~/.kube/config as a context named after the project, platform deploys MLflow, Dask, Ray and
    the queue sized by the capacity plan, and verify runs `piml check`. A re-run changes nothing.
    Exit 1 if any node or check fails (the other nodes carry on).

    \b
    Examples:
      piml up --accept-new-host-keys                      # first contact: record host keys
      piml up --only preflight --limit pi1,pi2
      piml up --from k3s --limit pi4                      # join a node added to the inventory
      piml up --dry-run
      piml up --only k3s --limit pi4 --print-command    # the ansible-playbook command, to run by hand
    """
    from piml.commands.up import run_up

    run_up(
        project,
        inventory,
        only,
        start,
        until,
        limit,
        accept_new_host_keys,
        dry_run,
        json,
        merge=not no_merge,
        print_command=print_command,
    )


@app.command()
def status(
    limit: LimitOpt = None,
    accept_new_host_keys: AcceptKeysOpt = False,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Refresh in place until Ctrl-C (not on a terminal: each refresh appended, stamped; with --json one JSON object a line).",
        ),
    ] = False,
    interval: Annotated[float, typer.Option("--interval", help="Seconds between refreshes with --watch.")] = 5.0,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
    json: JsonOpt = False,
) -> None:
    """Every node's health: reachable, model, arch, CPU, memory, disk, temperature, throttling, k3s.

    Every inventory node appears, reachable or not. Exit 0 when all are healthy, 1 otherwise.

    \b
    Examples:
      piml status
      piml status --json | jq '.nodes[] | {name, temperature_c}'
      piml status --watch --interval 10
    """
    from piml.commands.status import run_status

    run_status(project, inventory, limit, accept_new_host_keys, json, watch, interval)


@app.command()
def check(
    deep: Annotated[
        bool,
        typer.Option(
            "--deep",
            help="Also run work end to end: a Ray job trains and registers a model, a Dask computation, a queued request becomes a Job.",
        ),
    ] = False,
    limit: LimitOpt = None,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
    json: JsonOpt = False,
) -> None:
    """Prove the platform works: one table of pass / fail with timings. Exit 1 on any failure.

    Nodes (the facts piml reads over SSH): k3s running and enabled, the API port on servers, memory cgroup,
    no throttling. Cluster: nodes Ready without pressure, workloads ready, KEDA serving metrics.
    Components, through port-forwards: MLflow health and an authenticated call, Dask workers, Ray
    resources, the queue broker. --deep trains a model with Ray, registers it in MLflow, runs a Dask
    computation and sends a request through the queue; its Ray job pip-installs mlflow-skinny,
    scikit-learn and pandas (piml.yaml ray.check_pip: [] when the Ray image has them).

    \b
    Examples:
      piml check
      piml check --deep
      piml check --json | jq '.checks[] | select(.status == "fail")'
      piml check --limit pi1,pi2
    """
    from piml.commands.check import run_check

    run_check(project, inventory, deep, limit, json)


@app.command()
def teardown(
    k3s: Annotated[
        bool, typer.Option("--k3s", help="Uninstall k3s from the nodes instead (the platform goes with it).")
    ] = False,
    purge: Annotated[
        bool,
        typer.Option(
            "--purge",
            help="Delete the platform's volumes and their data too (asks for the project name unless --yes). Not with --k3s, which deletes the volumes on the nodes it uninstalls anyway.",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    limit: LimitOpt = None,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
    json: JsonOpt = False,
) -> None:
    """Remove the platform (volumes kept unless --purge), or with --k3s uninstall k3s from the nodes.

    With --k3s: drain and delete the agents, run k3s's uninstall scripts (agents, then servers),
    remove the project's context from ~/.kube/config. A node that is gone is skipped and reported
    (exit 1). --limit goes with --k3s only.

    \b
    Examples:
      piml teardown                      # the platform; MLflow's and Redis's data stay
      piml teardown --purge              # the platform and its data (type the project name)
      piml teardown --k3s --yes --limit pi4
    """
    from piml.commands.teardown import run_teardown

    run_teardown(project, inventory, k3s, yes, limit, json, purge)


@app.command()
def upgrade(
    k3s: Annotated[
        str | None,
        typer.Option("--k3s", metavar="VERSION", help="The k3s release to move every node to, e.g. v1.37.1+k3s1."),
    ] = None,
    platform: Annotated[
        bool,
        typer.Option(
            "--platform",
            help="Move the platform to the versions piml.yaml names (MLflow backed up, migrated), then verify.",
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be done, in order; change nothing.")
    ] = False,
    max_unavailable: Annotated[
        int, typer.Option("--max-unavailable", min=1, help="Agents upgraded at once (servers: always one).")
    ] = 1,
    drain_timeout: Annotated[
        int, typer.Option("--drain-timeout", min=10, help="Seconds a node's drain may take.")
    ] = 300,
    backup: Annotated[
        bool, typer.Option("--backup/--no-backup", help="Back up the k3s datastore and the project first.")
    ] = True,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
    json: JsonOpt = False,
) -> None:
    """Upgrade k3s (servers one at a time, then agents, each drained, upgraded and uncordoned) or the platform.

    Refuses a downgrade or a skip of more than one minor version (Kubernetes' skew policy), and a cluster with a
    node that is not Ready. Takes a backup first. The first node that fails stops the upgrade, the rest keep
    their version; run it again to resume. piml.yaml's k3s.version moves when every node is at the new one.
    With an air-gap directory, put the new release's files there first.

    \b
    Examples:
      piml upgrade --k3s v1.37.1+k3s1 --dry-run
      piml upgrade --k3s v1.37.1+k3s1 --max-unavailable 2
      piml upgrade --platform            # after changing mlflow.version (or ray/dask) in piml.yaml
    """
    from piml.commands.upgrade import run_upgrade

    run_upgrade(project, inventory, k3s, platform, dry_run, max_unavailable, drain_timeout, backup, json)


@node_app.command("add")
def node_add(
    node: Annotated[
        str, typer.Argument(metavar="NAME=ADDRESS[:ROLE]", help="The board; ROLE: agent (default) or server.")
    ],
    until: Annotated[
        str | None, typer.Option("--until", help="Stop after this stage of piml up (default: all, verify last).")
    ] = None,
    accept_new_host_keys: AcceptKeysOpt = False,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
    json: JsonOpt = False,
) -> None:
    """Add a board: the inventory gets it (comments kept), then piml up runs for it and re-plans the platform.

    \b
    Examples:
      piml node add pi5=192.168.1.25 --accept-new-host-keys
    """
    from piml.commands.node import run_node_add

    run_node_add(project, inventory, node, until, accept_new_host_keys, json)


@node_app.command("remove")
def node_remove(
    name: Annotated[str, typer.Argument(help="The node, as the inventory names it.", show_default=False)],
    force: Annotated[
        bool, typer.Option("--force", help="Remove it even with a volume on it or etcd quorum at risk.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
    json: JsonOpt = False,
) -> None:
    """Retire a board: drain it, delete it from the cluster, uninstall k3s, take it out of the inventory.

    Refused (exit 2, nothing changed) while a platform volume lives on it, for the first server, and when the
    servers left would lose etcd quorum; --force passes the volume and quorum checks.

    \b
    Examples:
      piml node remove pi4
    """
    from piml.commands.node import run_node_remove

    run_node_remove(project, inventory, name, force, yes, json)


TransferTimeoutOpt = Annotated[
    float,
    typer.Option("--timeout", min=10, help="Seconds the copy to or from the node may take in all.", show_default=True),
]


@app.command()
def backup(
    to: Annotated[
        Path | None,
        typer.Option("--to", help="Directory for the archive [default: PROJECT/backups].", show_default=False),
    ] = None,
    scheduled: Annotated[
        bool,
        typer.Option(
            "--scheduled",
            help="Take no new backup: copy here the archives backup.schedule made (those not here yet), from the "
            "bucket when backup.s3_uri is set, else from the cluster.",
        ),
    ] = False,
    timeout: TransferTimeoutOpt = 1800,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
    json: JsonOpt = False,
) -> None:
    """Back up MLflow's data (its stores copied online, its artifacts) and the project into one archive.

    The archive (mode 0600: it holds the project's keys and secrets) is named after the project and the time,
    with its sha256 in a .sha256 file beside it. What it does not hold yet is named in it and in the output.

    \b
    Examples:
      piml backup                        # -> backups/piml-backup-lab-20261202T210000Z.tar.gz
      piml backup --to /mnt/nas/piml
      piml backup --scheduled            # copy what backup.schedule made in the cluster
    """
    from piml.commands.backup import run_backup, run_fetch_scheduled

    if scheduled:
        run_fetch_scheduled(project, inventory, to, timeout, json)
    else:
        run_backup(project, inventory, to, timeout, json)


@app.command()
def restore(
    archive: Annotated[Path, typer.Argument(help="An archive made by `piml backup`.", show_default=False)],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    timeout: TransferTimeoutOpt = 1800,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
    json: JsonOpt = False,
) -> None:
    """Put MLflow's data and the Redis queue from a backup back onto the running cluster.

    The archive is checked whole first (a damaged one is refused, nothing changed). MLflow and Redis stop, each
    volume's directory is replaced on its node (the data it had is kept beside it, named in the output), and they
    start.
    The project part is not unpacked: `tar -xzf ARCHIVE project.tar` takes it.

    \b
    Examples:
      piml restore backups/piml-backup-lab-20261202T210000Z.tar.gz
    """
    from piml.commands.backup import run_restore

    run_restore(project, inventory, archive, yes, timeout, json)


@app.command()
def plan(
    reach: Annotated[
        bool, typer.Option("--reach", help="Size from the nodes' facts (SSH) instead of the inventory's declarations.")
    ] = False,
    accept_new_host_keys: AcceptKeysOpt = False,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
    json: JsonOpt = False,
) -> None:
    """The capacity plan: which node runs each component, requests and limits, what is left for work.

    Exit 2, naming the node and the shortfall, when the platform does not fit.

    \b
    Examples:
      piml plan
      piml plan --reach --json
    """
    from piml.commands.plan import run_plan

    run_plan(project, inventory, reach, accept_new_host_keys, json)


@app.command()
def render(
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="Write one file per component into this directory [default: stdout].",
            show_default=False,
        ),
    ] = None,
    include_secrets: Annotated[
        bool, typer.Option("--include-secrets", help="Put secret values into the Secret objects (files get mode 0600).")
    ] = False,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
) -> None:
    """The platform's Kubernetes manifests, rendered from the plan, for review or GitOps.

    \b
    Examples:
      piml render --out manifests/
      piml render | less
    """
    from piml.commands.render import run_render

    run_render(project, inventory, out, include_secrets)


QueueUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--queue-url",
        help="Talk to this broker directly (redis://[:PASSWORD@]HOST:PORT/DB or amqp://USER:PASSWORD@HOST:PORT/) instead of the cluster's through the Kubernetes API [default: $PIML_QUEUE_URL].",
        show_default=False,
    ),
]


@app.command()
def submit(
    model: Annotated[
        str,
        typer.Argument(
            help="MLflow model URI: models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH.", show_default=False
        ),
    ],
    input: Annotated[
        str,
        typer.Argument(
            help="A .csv, .parquet or .jsonl dataset: runs:/... or mlflow-artifacts:/... URI, http(s) URL, absolute path, or a path on the artifact store.",
            show_default=False,
        ),
    ],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="NAME=VALUE, repeatable: batch_size for the runner, the rest for the model's predict().",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            help="The predictions' file name in the MLflow run [default: predictions.csv].",
            show_default=False,
        ),
    ] = None,
    request_id: Annotated[
        str | None, typer.Option("--id", help="Use this request id instead of a fresh one.", show_default=False)
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Follow the request to the end; exit 1 if it failed.")
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds --wait waits at most.")] = 3600.0,
    queue_url: QueueUrlOpt = None,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
    json: JsonOpt = False,
) -> None:
    """Queue a request to run a registered model on a dataset; print its id.

    The request is validated first. Each request becomes a Kubernetes Job (KEDA) that logs the
    predictions as an artifact of an MLflow run in the experiment piml-jobs.

    \b
    Examples:
      piml submit models:/iris/3 datasets/iris.csv
      piml submit models:/churn@champion https://data.lan/customers.parquet --param batch_size=5000 --wait
      piml submit runs:/0a1b2c3d4e5f60718293a4b5c6d7e8f9/model /data/x.jsonl --queue-url redis://:PASSWORD@127.0.0.1:6379/0
    """
    from piml.commands.submit import run_submit

    run_submit(model, input, param or [], output, request_id, wait, timeout, queue_url, project, inventory, json)


@app.command()
def jobs(
    request_id: Annotated[str | None, typer.Argument(help="Show this request only.", show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many recent requests to list.")] = 50,
    queue_url: QueueUrlOpt = None,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
    json: JsonOpt = False,
) -> None:
    """Recent requests: state, times, node, attempts, MLflow run and error.

    \b
    Examples:
      piml jobs
      piml jobs 20261124-153000-3f2a9c1e
      piml jobs --json | jq '.jobs[] | select(.state == "failed") | {id, error}'
    """
    from piml.commands.jobs import run_jobs

    run_jobs(request_id, limit, queue_url, project, inventory, json)


ServeUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Reach Ray Serve's HTTP proxy here (http://HOST:PORT) instead of the cluster's through the Kubernetes "
        "API [default: $PIML_SERVE_URL].",
        show_default=False,
    ),
]


@serve_app.command("list")
def serve_list(
    url: ServeUrlOpt = None, project: ProjectOpt = None, inventory: InventoryOpt = None, json: JsonOpt = False
) -> None:
    """The routes of piml.yaml: model, version loaded and since when, replicas serving it.

    Exit 1 naming each route that does not answer.

    \b
    Examples:
      piml serve list
      piml serve list --json | jq '.routes[] | {route, version}'
    """
    from piml.commands.serve import run_list

    run_list(project, inventory, url, json)


@serve_app.command("predict")
def serve_predict(
    route: Annotated[str, typer.Argument(help="The route (a name under serve.routes).", show_default=False)],
    input: Annotated[str, typer.Argument(help="JSON or CSV rows: a file, or - for stdin.", show_default=False)],
    url: ServeUrlOpt = None,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
    json: JsonOpt = False,
) -> None:
    """Predictions for rows: one per line (the model and version on stderr); --json adds probabilities.

    JSON as MLflow's scoring server takes it ({"inputs": [[...]]}, {"dataframe_split": ...}, records) or CSV
    with a header. Exit 2 with the route's one-line reason when it refuses the rows.

    \b
    Examples:
      piml serve predict iris rows.csv
      echo '{"inputs": [[5.1, 3.5, 1.4, 0.2]]}' | piml serve predict iris - --json
    """
    from piml.commands.serve import run_predict

    run_predict(route, input, project, inventory, url, json)


@serve_app.command("reload")
def serve_reload(
    route: Annotated[str, typer.Argument(help="The route to reload.", show_default=False)],
    url: ServeUrlOpt = None,
    project: ProjectOpt = None,
    inventory: InventoryOpt = None,
    json: JsonOpt = False,
) -> None:
    """Load the version the route's model URI names now (e.g. after moving an alias), on every replica, without
    dropping a request; waits until all serve it (bounded).

    \b
    Examples:
      piml serve reload iris
    """
    from piml.commands.serve import run_reload

    run_reload(route, project, inventory, url, json)
