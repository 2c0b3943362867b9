"""Turn the plan into manifests: one YAML document list per component, ready to apply or write out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

import yaml

from piml.errors import InputError, Problem
from piml.render import images

if TYPE_CHECKING:
    from piml.plan import Plan
    from piml.project import Cluster

COMPONENTS = ("namespace", "mlflow", "dask", "ray", "queue", "runner", "serve", "ingress")
MANAGED_BY = {"app.kubernetes.io/managed-by": "piml"}


@dataclass(frozen=True)
class Rendered:
    component: str
    objects: tuple[dict, ...]

    def text(self) -> str:
        return yaml.dump_all(list(self.objects), Dumper=_BlockDumper, sort_keys=False, default_flow_style=False)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (Helm values, config files) as readable `|` blocks."""


_BlockDumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None),
)


def _environment():
    import jinja2

    from piml.paths import templates_dir

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,  # a missing value is a bug, never an empty string
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    # quoted: an unquoted 1 is a YAML number, and a custom resource keeps the type it was sent with
    env.filters["cpu"] = lambda m: '"' + canonical_cpu(m) + '"'
    env.filters["mem"] = lambda mi: '"' + canonical_memory(mi) + '"'
    env.filters["yaml_str"] = lambda v: yaml.safe_dump(str(v), default_style='"').strip()
    return env


def context(cluster: Cluster, plan: Plan, secrets: dict[str, str] | None) -> dict[str, Any]:
    config = cluster.config
    servers = [n.address for n in cluster.inventory.servers]
    ns = config.namespace
    mlflow_hosts, mlflow_origins = _mlflow_access(cluster)
    return {
        "project": cluster.name,
        "ns": ns,
        "config": config,
        "plan": plan,
        "place": {p.component: p for p in plan.services},
        "images": {
            "mlflow": images.mlflow(config.mlflow.version),
            "dask": images.dask(config.dask.version),
            "ray": {arch: images.ray(config.ray.version, arch) for arch in ("arm64", "amd64")},
            "redis": images.REDIS,
            "postgres": images.POSTGRES,
            "minio": images.MINIO,
            "rabbitmq": images.RABBITMQ,
        },
        "secrets": _with_mlflow_stores(cluster, secrets),  # None: Secret objects are rendered without values
        "mlflow_allowed_hosts": mlflow_hosts,
        "mlflow_cors_origins": mlflow_origins,
        "mlflow_pip": _mlflow_pip(config.mlflow),
        "ui_host": servers[0],
        "common_labels": {**MANAGED_BY, "app.kubernetes.io/part-of": "piml", "piml.io/project": cluster.name},
        **_runner(config),
        "serve": _serve(config),
        "backup_job": _backup_job(config),
        "ray_external": _ray_external(cluster),
    }


def _ray_external(cluster: Cluster) -> list[dict[str, str]]:
    """The ray_external hosts the head's GCS is opened to (templates/ray.yaml.j2): name and /32 or /128 block.
    A NetworkPolicy needs addresses; a host known by name only is left out (the stage says so on its row)."""
    from piml.rayext.units import ip_block

    blocks = {node.name: ip_block(node) for node in cluster.inventory.external}
    return [{"name": name, "cidr": cidr} for name, cidr in blocks.items() if cidr]


def _mlflow_access(cluster: Cluster) -> tuple[list[str], list[str]]:
    """The Host headers and browser origins MLflow's security middleware must accept, one per way it is reached.

    MLflow compares the Host header exactly, port included, and setting the list replaces its defaults; it
    refuses a state-changing API call whose Origin is not listed (the UI's own POSTs through the ingress).
    - pods: the Service by every DNS form, with and without the port;
    - piml and `kubectl port-forward`: a loopback address on whatever local port was free;
    - browsers through the ingress (ports 80/443, so no port in Host): each node's address and name, and the
      names in `mlflow.ui_hosts`. The kubelet's probe goes to `<prefix>/health`, which MLflow exempts.
    """
    ns = cluster.config.namespace
    names = [f"mlflow{suffix}" for suffix in ("", f".{ns}", f".{ns}.svc", f".{ns}.svc.cluster.local")]
    hosts = names + [f"{name}:5000" for name in names] + ["localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*"]
    ui = []
    for node in cluster.inventory.cluster_nodes:
        ui += [node.address, node.name]
    ui += cluster.config.mlflow.ui_hosts
    ui = list(dict.fromkeys(ui))
    return hosts + ui, [f"{scheme}://{host}" for host in ui for scheme in ("http", "https")]


def _mlflow_pip(mlflow) -> list[str]:
    """The pinned packages MLflow's init container adds to the image, for the stores in use."""
    wanted = list(images.MLFLOW_EXTRA["auth"])
    if mlflow.backend == "postgresql" or mlflow.backend_uri:
        wanted += images.MLFLOW_EXTRA["postgresql"]
    if mlflow.artifacts != "pvc":
        wanted += images.MLFLOW_EXTRA["s3"]
    return wanted


def _with_mlflow_stores(cluster: Cluster, secrets: dict[str, str] | None) -> dict[str, str] | None:
    """`secrets` plus what the mlflow Secret carries for the user's own stores: the external database's URI with
    its password (`mlflow_backend_uri`), and a check that external S3's keys were given. The Deployment names
    these only by secretKeyRef; the URI reaches `--backend-store-uri` through `$(MLFLOW_BACKEND_STORE_URI)`."""
    from piml.secrets import require_s3_keys

    mlflow = cluster.config.mlflow
    if secrets is None or not mlflow.enabled:
        return secrets
    secrets = dict(secrets)
    where = cluster.paths.show(cluster.paths.secrets)
    if mlflow.backend_uri:
        secrets["mlflow_backend_uri"] = backend_uri(mlflow.backend_uri, secrets.get("mlflow_backend_password"), where)
    if mlflow.artifacts == "s3":
        require_s3_keys(secrets, "mlflow", "mlflow.artifacts is s3", where)
    if cluster.config.backup.schedule and cluster.config.backup.s3_uri:
        require_s3_keys(secrets, "backup", "backup.s3_uri is set", where)
    return secrets


def backend_uri(uri: str, password: str | None, where: str = ".piml/secrets.yaml") -> str:
    """piml.yaml's `mlflow.backend_uri` (no password there) with the user's password put in, escaped."""
    if not password:
        return uri
    parts = urlsplit(uri)
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    if not user:
        raise InputError(
            Problem(
                where,
                "mlflow_backend_password is given, but mlflow.backend_uri names no user",
                "write the user into the URI in piml.yaml: postgresql://USER@HOST/DB",
            )
        )
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


def _runner(config) -> dict[str, Any]:
    """The queue runner's source files and pinned broker client, for templates/runner.yaml.j2."""
    if not config.queue.enabled:
        return {"runner_source": [], "runner_pip": {}}
    from piml.runner.ship import PIP, source_files

    return {"runner_source": source_files(), "runner_pip": PIP}


def _backup_job(config) -> dict[str, str] | None:
    """The scheduled backup's programs and piml's version, for templates/mlflow.yaml.j2 (backup.schedule)."""
    if not (config.mlflow.enabled and config.backup.schedule):
        return None
    from piml import __version__
    from piml.backup.onnode import SNAPSHOT
    from piml.render.source import PACKAGE

    programs = {name: (PACKAGE / "backup" / name).read_text() for name in ("scheduled.py", "s3store.py")}
    return {"snapshot.py": SNAPSHOT, **programs, "piml_version": __version__}


def _serve(config) -> dict[str, Any] | None:
    """The serving cluster's code, serveConfigV2 text and names, for templates/serve.yaml.j2."""
    if not config.serve.enabled:
        return None
    from piml.plan.sizes import SERVE_OBJECT_STORE_BYTES
    from piml.render.source import digest
    from piml.serve import apps

    source = apps.code()
    text = yaml.safe_dump(apps.serve_config(config, digest(source)), sort_keys=False)
    return {
        "name": apps.NAME,
        "service": apps.SERVICE,
        "port": apps.SERVE_PORT,
        "slot": apps.SLOT,
        "source": source,
        "config_text": text,
        "object_store_bytes": SERVE_OBJECT_STORE_BYTES,
        "pod_env": apps.POD_ENV,
    }


def render_platform(cluster: Cluster, plan: Plan, secrets: dict[str, str] | None = None) -> list[Rendered]:
    """Every component's objects, in apply order. `secrets` None leaves Secret values out."""
    env = _environment()
    ctx = context(cluster, plan, secrets)
    result = []
    for component in COMPONENTS:
        text = env.get_template(f"{component}.yaml.j2").render(**ctx)
        objects = tuple(doc for doc in yaml.safe_load_all(text) if doc)
        if objects:
            result.append(Rendered(component, objects))
    return result


def urls(cluster: Cluster) -> dict[str, str]:
    """Where the UIs answer on the LAN, through the k3s ingress on the first server."""
    host = cluster.inventory.servers[0].address
    config = cluster.config
    found = {}
    if config.mlflow.enabled:
        found["mlflow"] = f"http://{host}/mlflow/"
    if config.ray.enabled:
        found["ray dashboard"] = f"http://{host}/ray/"
    if config.dask.enabled:
        found["dask dashboard"] = f"http://{host}/dask/status"
    if config.serve.enabled:
        from piml.serve.apps import route_url

        for route in config.serve.routes:  # each needs the serving token (serve_token in .piml/secrets.yaml)
            found[f"route {route}"] = f"http://{host}{route_url(route)}/predict"
    return found


# Quantities as Kubernetes writes them back (Go's resource.Quantity, canonical form): a controller that decodes
# and re-encodes an object (KubeRay adding its finalizer, for one) turns 1000m into 1 and 1024Mi into 1Gi, and
# for a custom resource, whose strings are stored as sent, piml's next apply would then change them back.
def canonical_cpu(millicores: int) -> str:
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def canonical_memory(mebibytes: int) -> str:
    for unit, size in (("Ti", 1024 * 1024), ("Gi", 1024)):
        if mebibytes and mebibytes % size == 0:
            return f"{mebibytes // size}{unit}"
    return f"{mebibytes}Mi"
