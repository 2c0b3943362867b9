"""piml.yaml: the platform settings, with defaults so that an empty file is valid.

pydantic does the type checking (strict models: unknown keys are errors); this module turns its
errors into piml's one-line `piml.yaml:LINE: what; how to fix` form with the nearest valid key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from piml.errors import InputError, Problem, by_line
from piml.inventory.ansible import did_you_mean
from piml.yamlsrc import YamlDoc, read_yaml

K3S_VERSION = "v1.36.3+k3s1"  # the stable channel, November 2026 (FACTS.md)
KUBERAY_CHART = "1.7.0"
KEDA_CHART = "2.20.2"
MLFLOW_VERSION = "3.18.0"
RAY_VERSION = "2.60.0"
DASK_VERSION = "2026.8.0"

CpuQuantity = Annotated[str, StringConstraints(pattern=r"^\d+(\.\d+)?m?$")]
MemoryQuantity = Annotated[str, StringConstraints(pattern=r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")]
Version = Annotated[str, StringConstraints(pattern=r"^\d+\.\d+\.\d+$")]
# A DNS name or an IPv4 address as a browser puts it in the Host header (lower case, no port, no scheme).
HOST_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
HostName = Annotated[str, StringConstraints(pattern=HOST_NAME_PATTERN)]
# What a value of each pattern without a default to show looks like, for the error's fix.
PATTERN_HINTS = {HOST_NAME_PATTERN: "as a lower-case DNS name or IPv4 address, without a port or scheme, e.g. pi1.lan"}


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class Quantities(Settings):
    cpu: CpuQuantity | None = Field(None, description="CPU, e.g. 500m or 2")
    memory: MemoryQuantity | None = Field(None, description="memory, e.g. 512Mi or 2Gi")


class Size(Settings):
    """Requests and limits for one container; unset values come from the capacity plan."""

    requests: Quantities = Quantities()
    limits: Quantities = Quantities()

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Size:
        # Kubernetes refuses a container whose request is above its limit; say so here, at the line.
        from piml.plan.quantities import cpu_m, memory_mi

        for name, parse in (("cpu", cpu_m), ("memory", memory_mi)):
            request, limit = getattr(self.requests, name), getattr(self.limits, name)
            if request is not None and limit is not None and parse(request) > parse(limit):
                raise _setting(
                    f"requests.{name} {request} is above limits.{name} {limit} (Kubernetes refuses such a pod)",
                    f"lower the request or raise the limit to at least {request}",
                    key="requests",
                    named=False,
                )
        return self


class K3s(Settings):
    version: Annotated[str, StringConstraints(pattern=r"^v\d+\.\d+\.\d+\+k3s\d+$")] = Field(
        K3S_VERSION, description="pinned k3s release (INSTALL_K3S_VERSION)"
    )
    airgap_dir: str | None = Field(None, description="directory with k3s binary, images tarball and install.sh")
    disable: list[str] = Field(default_factory=list, description="packaged components to disable, e.g. [servicelb]")
    wait_timeout: int = Field(
        180, ge=10, le=3600, description="seconds to wait for the API port and each node to be Ready"
    )


class NodeSetup(Settings):
    # auto: 4 KB pages only for an image known to need them, and none of the pinned ones does (the official
    # redis image and Ray's arm64 wheels build jemalloc for up to 64 KB pages; docs/facts.md), so auto is
    # false for now, resolved here once for every reader of the setting.
    pi5_4k_pages: Annotated[bool | Literal["auto"], AfterValidator(lambda v: False if v == "auto" else v)] = Field(
        "auto",
        description="true: boot a Pi 5 that runs 16 KB pages with kernel8.img (4 KB pages) where its boot "
        "partition has one; false or auto: keep the image's kernel, no platform image needs 4 KB (docs/facts.md)",
    )
    reboot_timeout: int = Field(600, ge=30, le=3600, description="seconds to wait for a node to come back")


def _s3_endpoint(section: str, value: str | None) -> str | None:
    """An S3 store's http(s)://HOST[:PORT] (mlflow.s3_endpoint_url, backup.s3_endpoint_url); its keys go in
    .piml/secrets.yaml as SECTION_s3_access_key and SECTION_s3_secret_key, never in the URL."""
    if value is None:
        return value
    parts = _split_url(value)
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise _setting(
            f"'{section}.s3_endpoint_url' is not an http(s)://HOST[:PORT] URL", "write it like http://nas.lan:9000"
        )
    if parts.username is not None:
        raise _setting(
            f"'{section}.s3_endpoint_url' has credentials in it",
            f"remove them (the keys go in .piml/secrets.yaml as {section}_s3_access_key and {section}_s3_secret_key)",
        )
    return value


S3_REGION = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


class MLflow(Settings):
    enabled: bool = True
    version: Version = MLFLOW_VERSION
    backend: Literal["sqlite", "postgresql"] = Field("sqlite", description="tracking store")
    backend_uri: str | None = Field(
        None,
        description="external PostgreSQL instead of a deployed one: postgresql://USER@HOST[:PORT]/DB, no password "
        "(mlflow_backend_password in .piml/secrets.yaml or $PIML_MLFLOW_BACKEND_PASSWORD)",
    )
    artifacts: Literal["pvc", "minio", "s3"] = Field(
        "pvc", description="artifact store; s3: your own, see artifacts_uri"
    )
    artifacts_uri: str | None = Field(
        None,
        description="artifacts: s3 (required then): s3://BUCKET[/PATH]; keys: mlflow_s3_access_key and "
        "mlflow_s3_secret_key in .piml/secrets.yaml or $PIML_MLFLOW_S3_ACCESS_KEY / _SECRET_KEY",
    )
    s3_endpoint_url: str | None = Field(
        None, description="artifacts: s3 elsewhere than AWS (MinIO, Garage, a NAS): http(s)://HOST[:PORT]"
    )
    s3_region: S3_REGION | None = Field(
        None, description="artifacts: s3 region, e.g. eu-west-1 (Garage: garage); unset: the client's default"
    )
    storage: MemoryQuantity = Field("10Gi", description="size of the MLflow volume")
    ui_hosts: list[HostName] = Field(
        default_factory=list,
        description="other names browsers reach the UI by (e.g. a DNS name); nodes' names and addresses are in",
    )
    resources: Size = Size()

    @field_validator("backend_uri")
    @classmethod
    def _backend_uri(cls, value: str | None) -> str | None:
        # Never echo the value: it may hold a password.
        if value is None:
            return value
        fix = "write it like postgresql://mlflow@db.lan:5432/mlflow"
        parts = _split_url(value)
        if parts is None or parts.scheme not in BACKEND_SCHEMES or not parts.hostname or parts.path in ("", "/"):
            raise _setting("'mlflow.backend_uri' is not a postgresql://USER@HOST[:PORT]/DB URI", fix)
        if parts.password or "password=" in parts.query.lower():
            raise _setting(
                "'mlflow.backend_uri' has a password in it (piml.yaml is no place for secrets)",
                "remove it there and put it in .piml/secrets.yaml as mlflow_backend_password "
                "(or in $PIML_MLFLOW_BACKEND_PASSWORD)",
            )
        return value

    @field_validator("artifacts_uri")
    @classmethod
    def _artifacts_uri(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?", value):
            raise _setting(
                "'mlflow.artifacts_uri' is not an s3://BUCKET[/PATH] URI", "write it like s3://mlflow/artifacts"
            )
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _s3_endpoint_url(cls, value: str | None) -> str | None:
        return _s3_endpoint("mlflow", value)

    @model_validator(mode="after")
    def _stores(self) -> MLflow:
        if self.artifacts == "s3" and not self.artifacts_uri:
            raise _setting(
                "'mlflow.artifacts' is 's3' but no bucket is named",
                "add artifacts_uri: s3://BUCKET[/PATH] (and s3_endpoint_url for a store other than AWS)",
                "artifacts",
            )
        if self.artifacts != "s3":
            for key in ("artifacts_uri", "s3_endpoint_url", "s3_region"):
                if getattr(self, key) is not None:
                    other = (
                        " (piml deploys MinIO; for your own, artifacts: s3 with s3_endpoint_url)"
                        if self.artifacts == "minio"
                        else ""
                    )
                    raise _setting(
                        f"'mlflow.{key}' is only used with artifacts: s3, not {self.artifacts!r}{other}",
                        f"set artifacts: s3, or remove {key}",
                        key,
                    )
        return self


BACKEND_SCHEMES = ("postgresql", "postgresql+psycopg")  # the driver piml installs: psycopg 3 (images.MLFLOW_EXTRA)


def _split_url(value: str):
    """urlsplit, or None for what is no URL at all (spaces, control characters, a bad port or IPv6 address)."""
    if any(c.isspace() or ord(c) < 32 for c in value):
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return None
    return parts


def _setting(what: str, fix: str, key: str | tuple | None = None, named: bool = True) -> PydanticCustomError:
    """A problem found by piml's own checks; `key`: the setting to point at (a model validator's own errors
    would point at the block). `named=False`: `what` does not name its block, so the message is prefixed with it."""
    return PydanticCustomError("piml_setting", "{what}; {fix}", {"what": what, "fix": fix, "key": key, "named": named})


class Dask(Settings):
    enabled: bool = True
    version: Annotated[str, StringConstraints(pattern=r"^\d{4}\.\d+\.\d+$")] = DASK_VERSION
    extra_pip_packages: list[str] = Field(default_factory=list, description="installed in the images at start")
    scheduler: Size = Size()
    worker: Size = Size()


class RayExternal(Settings):
    """How the inventory's ray_external hosts join the cluster's Ray (`piml up`'s ray-external stage)."""

    gcs_node_port: int | None = Field(
        None,
        ge=30000,
        le=32767,
        description="the NodePort of the head's GCS (open to the ray_external hosts only); unset: Kubernetes picks "
        "one (NodePorts are cluster-wide: a fixed one collides with another project's)",
    )
    pip_args: list[str] = Field(
        default_factory=list,
        description="extra pip arguments for installing Ray on them, e.g. [--index-url, http://mirror/simple]",
    )
    wait_timeout: int = Field(180, ge=10, le=3600, description="seconds to wait for each to show ALIVE in the head")


class Ray(Settings):
    enabled: bool = True
    version: Version = RAY_VERSION
    operator_chart: Version = Field(KUBERAY_CHART, description="kuberay-operator chart version")
    idle_timeout_seconds: int = Field(60, ge=10, le=86400, description="autoscaler scale-down delay")
    gcs_fault_tolerance: bool = Field(False, description="keep GCS state in Redis")
    check_pip: list[str] | None = Field(
        None,
        description="what `piml check --deep`'s Ray job pip-installs; unset: mlflow-skinny (the server's version), "
        "scikit-learn, skops, pandas; [] when the Ray image has them (air-gapped clusters)",
    )
    head: Size = Size()
    worker: Size = Size()
    external: RayExternal = RayExternal()


class Queue(Settings):
    enabled: bool = True
    kind: Literal["redis", "rabbitmq"] = "redis"
    keda_chart: Version = Field(KEDA_CHART, description="keda chart version")
    max_jobs: int | None = Field(None, ge=1, le=1000, description="most Jobs at once; default from the plan")
    retries: int = Field(3, ge=0, le=20, description="attempts before a request goes to the dead-letter list")
    resources: Size = Size()


# An MLflow registry URI: a name with an alias, a version number, or latest (what mlflow.pyfunc.load_model takes).
MODEL_URI_PATTERN = r"^models:/[^/@\s]+(@[A-Za-z0-9_-]+|/(\d+|latest))$"
ModelUri = Annotated[str, StringConstraints(pattern=MODEL_URI_PATTERN)]
# A route is a Serve application's name and URL path, and part of a Ray actor's name: a short DNS label.
ROUTE_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,28}[a-z0-9])?$"
RouteName = Annotated[str, StringConstraints(pattern=ROUTE_PATTERN)]
PATTERN_HINTS[MODEL_URI_PATTERN] = "as models:/NAME@ALIAS, models:/NAME/VERSION or models:/NAME/latest"
PATTERN_HINTS[ROUTE_PATTERN] = "in lower-case letters, digits and '-', at most 30, e.g. iris"


class ServeRoute(Settings):
    """One served model: POST /serve/<route>/predict answers with it."""

    model: ModelUri = Field(description="the registered model, e.g. models:/iris@champion")
    min_replicas: int = Field(1, ge=0, le=32, description="replicas always running (0: the first request waits)")
    max_replicas: int = Field(2, ge=1, le=32, description="most replicas under load (the plan reserves room)")
    batch_size: int = Field(8, ge=1, le=256, description="requests answered together by one model call")
    cpu: CpuQuantity = Field("500m", description="CPU each replica's pod requests")
    memory: MemoryQuantity = Field("1Gi", description="memory each replica's model process may use")

    @model_validator(mode="after")
    def _min_within_max(self) -> ServeRoute:
        if self.min_replicas > self.max_replicas:
            raise _setting(
                f"min_replicas {self.min_replicas} is above max_replicas {self.max_replicas}",
                f"lower min_replicas or raise max_replicas to at least {self.min_replicas}",
                key="min_replicas",
                named=False,
            )
        return self


class Serve(Settings):
    enabled: bool = Field(False, description="online serving of registered MLflow models through Ray Serve")
    routes: dict[RouteName, ServeRoute] = Field(
        default_factory=dict,
        description="one per model: POST /serve/NAME/predict answers with it",
    )
    pip: list[str] | None = Field(
        None,
        description="what the replicas pip-install (Ray runtime_env); unset: mlflow-skinny (the server's "
        "version), scikit-learn, skops, pandas; [] when the Ray image has them (air-gapped clusters)",
    )
    head: Size = Size()

    @model_validator(mode="after")
    def _has_routes(self) -> Serve:
        from piml.serve.apps import CHECK_ROUTE

        if CHECK_ROUTE in self.routes:
            raise _setting(
                f"'serve.routes.{CHECK_ROUTE}' is piml's own route (`piml check --deep` serves its model there)",
                "give the route another name",
                "routes",
            )
        if self.enabled and not self.routes:
            raise _setting(
                "'serve.enabled' is true but no route is given",
                "add one, e.g. `routes: {iris: {model: 'models:/iris@champion'}}`, or set enabled: false",
                "enabled",
            )
        return self


# A CronJob's schedule as Kubernetes parses it (robfig/cron's standard parser, which kube-apiserver validates
# with): five fields, or a descriptor. Names are allowed in the month and weekday fields.
CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
CRON_FIELDS = (  # (name, lowest, highest, names)
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    ("day of week", 0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)


def cron_problem(schedule: str) -> str | None:
    """Why `schedule` is not a schedule Kubernetes takes, or None when it is."""
    text = schedule.strip()
    if re.match(r"^(CRON_)?TZ=", text):
        return "a time zone inside the schedule is not supported by Kubernetes"
    if text.startswith("@"):
        if text.lower() in CRON_DESCRIPTORS or re.fullmatch(r"@every (\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+", text):
            return None
        return f"unknown descriptor {text.split()[0][:20]!r} (use one of {', '.join(CRON_DESCRIPTORS)})"
    fields = text.split()
    if len(fields) != 5:
        return f"has {len(fields)} fields, a cron schedule has 5 (minute hour day-of-month month day-of-week)"
    for value, (name, low, high, names) in zip(fields, CRON_FIELDS, strict=True):
        for part in value.split(","):
            problem = _cron_part(part, low, high, names)
            if problem:
                return f"its {name} field {value[:20]!r}: {problem}"
    return None


def _cron_part(part: str, low: int, high: int, names: tuple[str, ...]) -> str | None:
    def number(text: str) -> int | None:
        if text.lower() in names:
            return names.index(text.lower()) + low
        return int(text) if text.isdigit() and len(text) <= 4 else None

    span, _, step = part.partition("/")
    if step and (not step.isdigit() or len(step) > 4 or int(step) == 0):
        return f"the step {step[:8]!r} is not a positive number"
    if span in ("*", "?"):
        return None
    first, _, last = span.partition("-")
    start, end = number(first), number(last) if last else None
    if start is None or (last and end is None):
        return f"{span[:12]!r} is not a number from {low} to {high}"
    if not low <= start <= high or (end is not None and not low <= end <= high):
        return f"{span[:12]!r} is outside {low}-{high}"
    if end is not None and end < start:
        return f"the range {span[:12]!r} runs backwards"
    return None


class Backup(Settings):
    """Scheduled backups of MLflow's data, by a CronJob on MLflow's node, into a volume there (`piml backup
    --scheduled` copies them to this machine)."""

    schedule: str | None = Field(
        None, description="cron schedule, e.g. '30 3 * * *' (03:30 daily); unset: no scheduled backups"
    )
    time_zone: str | None = Field(
        None, description="IANA zone the schedule is read in, e.g. Europe/Berlin; unset: the k3s server's"
    )
    keep: int = Field(7, ge=1, le=1000, description="scheduled archives kept; older ones are deleted")
    storage: MemoryQuantity = Field("10Gi", description="size of the piml-backups volume, on MLflow's node")
    s3_uri: str | None = Field(
        None,
        description="also keep the newest `keep` archives in this bucket, off the boards: s3://BUCKET[/PREFIX]; "
        "keys: backup_s3_access_key and backup_s3_secret_key in .piml/secrets.yaml or "
        "$PIML_BACKUP_S3_ACCESS_KEY / _SECRET_KEY",
    )
    s3_endpoint_url: str | None = Field(
        None, description="s3_uri elsewhere than AWS (MinIO, Garage, a NAS): http(s)://HOST[:PORT]"
    )
    s3_region: S3_REGION | None = Field(None, description="s3_uri's region, e.g. eu-west-1; unset: us-east-1")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = cron_problem(value)
        if problem:
            fix = "put the zone in backup.time_zone" if "time zone" in problem else "e.g. '30 3 * * *' for 03:30 daily"
            raise _setting(f"{value.strip()[:40]!r} {problem}", fix, named=False)
        return value.strip()

    @field_validator("s3_uri")
    @classmethod
    def _s3_uri(cls, value: str | None) -> str | None:
        # Keys are written as they are (no URL escaping to get wrong): letters, digits and . _ - / only.
        if value is not None and not re.fullmatch(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[A-Za-z0-9._/-]*)?", value):
            raise _setting(
                "'backup.s3_uri' is not an s3://BUCKET[/PREFIX] URI (a prefix of letters, digits, '.', '_', '-', '/')",
                "write it like s3://backups/piml/lab",
            )
        return value

    @field_validator("s3_endpoint_url")
    @classmethod
    def _s3_endpoint_url(cls, value: str | None) -> str | None:
        return _s3_endpoint("backup", value)

    @model_validator(mode="after")
    def _s3_needs_uri(self) -> Backup:
        for key in ("s3_endpoint_url", "s3_region"):
            if getattr(self, key) is not None and not self.s3_uri:
                raise _setting(f"'backup.{key}' is set but no bucket is named", "add s3_uri: s3://BUCKET[/PREFIX]", key)
        if self.s3_uri and not self.schedule:
            raise _setting(
                "'backup.s3_uri' is where scheduled archives go, and backup.schedule is not set",
                "set schedule (e.g. '30 3 * * *'), or remove s3_uri",
                "s3_uri",
            )
        return self

    @field_validator("time_zone")
    @classmethod
    def _time_zone(cls, value: str | None) -> str | None:
        import zoneinfo

        if value is None:
            return None
        known = zoneinfo.available_timezones()  # empty where the machine has no time zone database: then not checked
        if known and value not in known:
            raise _setting(
                f"unknown time zone {value[:40]!r}", "give an IANA name, e.g. Europe/Berlin or UTC", named=False
            )
        return value


class Flash(Settings):
    """`piml flash --node`: first-boot settings shared by every node (the node's own come from the inventory).

    The Wi-Fi passphrase is never kept here: piml reads it from $PIML_WIFI_PASSPHRASE, else from
    .piml/wifi-passphrase (mode 0600), else asks for it.
    """

    timezone: str | None = Field(None, description="e.g. Europe/Berlin; unset: keep the image's")
    wifi_country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] | None = Field(
        None, description="Wi-Fi regulatory country, e.g. DE; needed with wifi_ssid"
    )
    wifi_ssid: Annotated[str, StringConstraints(min_length=1, max_length=32, pattern=r"^[^\n\r]*$")] | None = Field(
        None, description="Wi-Fi network to join; unset: wired only"
    )
    network: Literal["auto", "dhcp", "static"] = Field(
        "auto", description="auto: a static address when the node's address is an IP and gateway is set"
    )
    prefix_length: int = Field(24, ge=1, le=32, description="netmask length of static addresses")
    gateway: str | None = Field(None, description="default gateway for static addresses, e.g. 192.168.1.1")
    dns: list[str] = Field(default_factory=list, description="name servers for static addresses")
    interface: Literal["eth0", "wlan0"] = Field("eth0", description="which interface gets the static address")
    cgroup_flags: bool = Field(True, description="add cgroup_enable=memory cgroup_memory=1 to cmdline.txt")


class PimlConfig(Settings):
    namespace: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")] = Field(
        "piml", description="namespace for the platform"
    )
    k3s: K3s = K3s()
    nodes: NodeSetup = NodeSetup()
    mlflow: MLflow = MLflow()
    dask: Dask = Dask()
    ray: Ray = Ray()
    queue: Queue = Queue()
    serve: Serve = Serve()
    backup: Backup = Backup()
    flash: Flash = Flash()

    @model_validator(mode="after")
    def _serving_needs(self) -> PimlConfig:
        for section in ("mlflow", "ray"):
            if self.serve.enabled and not getattr(self, section).enabled:
                why = "the models come from its registry" if section == "mlflow" else "KubeRay runs the serving"
                raise _setting(
                    f"'serve.enabled' needs {section} ({why}), and {section}.enabled is false",
                    f"set {section}.enabled: true, or serve.enabled: false",
                    ("serve", "enabled"),
                )
        return self

    @model_validator(mode="after")
    def _scheduled_backup_needs(self) -> PimlConfig:
        mlflow = self.mlflow
        if self.backup.schedule and (not mlflow.enabled or mlflow.backend_uri):
            why = "mlflow.enabled is false" if not mlflow.enabled else "its store is an external PostgreSQL"
            raise _setting(
                f"'backup.schedule' backs up the MLflow piml deploys, and {why}",
                "remove backup.schedule (back the external database up where it runs)"
                if mlflow.enabled
                else "remove backup.schedule",
                ("backup", "schedule"),
            )
        return self


def _step(annotation: Any, key: Any) -> Any:
    """The annotation one key below `annotation`: a model's field, or a mapping's value (serve.routes.NAME)."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(str(key))
        return field.annotation if field is not None else None
    if typing.get_origin(annotation) is dict and not isinstance(key, int):
        return typing.get_args(annotation)[1]
    return None


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The valid keys of the settings block at `loc`, for a "did you mean" hint."""
    annotation: Any = model
    for key in loc:
        annotation = _step(annotation, key)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


# What each member of a union setting accepts, by the tag pydantic puts into an error's location for it.
UNION_MEMBERS = {
    "bool": "true or false",
    "int": "a whole number",
    "float": "a number",
    "str": "text",
    "none": "nothing (null)",
}
# Plain words for pydantic's error types, and the value to show as an example.
PLAIN = {
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "list_type": "a list, e.g. [a, b] or one '- item' per line",
    "dict_type": "a mapping of NAME: VALUE",
}


def _setting_loc(loc: tuple) -> tuple[tuple, list[str]]:
    """A validation error's location without pydantic's union-member tags ('bool', "literal['auto']"), and the tags."""
    model: Any = PimlConfig
    kept: list = []
    tags: list[str] = []
    for key in loc:
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(key))
            kept.append(key)
            model = field.annotation if field is not None else None
            continue
        if (
            isinstance(key, int)
            or getattr(model, "__origin__", None) in (list, dict)
            or str(getattr(model, "__origin__", "")) == "typing.Annotated"
        ):
            kept.append(key)
            model = None
            continue
        if (
            str(key).split("[")[0] in ("bool", "int", "float", "str", "none", "literal")
            and not tags
            and _is_union(model)
        ):
            tags.append(str(key))
            continue
        if tags:
            continue
        kept.append(key)
    return tuple(kept), tags


def _is_union(annotation: Any) -> bool:
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_union(typing.get_args(annotation)[0])
    return origin in (typing.Union, types.UnionType)


def _alternatives(annotation: Any) -> str:
    """'true, false or 'auto'' for bool | Literal['auto']."""
    import typing

    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    words: list[str] = []
    for member in typing.get_args(annotation):
        if typing.get_origin(member) is Literal:
            words += [repr(v) for v in typing.get_args(member)]
        elif member is bool:
            words += ["true", "false"]
        else:
            words.append(UNION_MEMBERS.get(getattr(member, "__name__", ""), getattr(member, "__name__", str(member))))
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else "".join(words)


def _dotted_step(key: Any) -> str:
    """`.name`, `[0]`, or `['odd key']` for a key that is not a plain word (a user's mapping keys are anything)."""
    if isinstance(key, int):
        return f"[{key}]"
    return f".{key}" if re.fullmatch(r"[\w.-]+", str(key)) else f"[{str(key)!r}]"


def _problem(doc: YamlDoc, error: dict) -> Problem:
    loc, tags = _setting_loc(tuple(error["loc"]))
    dotted = "".join(_dotted_step(k) for k in loc).lstrip(".") or "(top)"  # ui_hosts[0]
    if error["type"] == "piml_setting":  # piml's own checks (MLflow's stores): what and fix are already worded
        ctx = error["ctx"]
        what = ctx["what"] if ctx.get("named", True) else f"{dotted}: {ctx['what']}"
        key = ctx.get("key") or ()
        return Problem(doc.where(loc + (key if isinstance(key, tuple) else (key,))), what, ctx["fix"])
    if loc and loc[-1] == "[key]":  # a mapping's key refused (serve.routes' route names)
        loc = loc[:-1]
        parent = ".".join(str(k) for k in loc[:-1])
        fix = f"write it {PATTERN_HINTS[ROUTE_PATTERN]}"  # serve.routes is the only mapping of named blocks
        return Problem(doc.where(loc), f"'{parent}' has the name {loc[-1]!r}, not a valid one", fix)
    where = doc.where(loc)
    if error["type"] == "missing":
        field = _field(loc)
        parent = dotted.rpartition(".")[0] or "(top)"
        about = f" ({field.description})" if field is not None and field.description else ""
        return Problem(doc.where(loc[:-1]), f"'{parent}' has no '{loc[-1]}'", f"add {loc[-1]}{about}")
    if tags and (field := _field(loc)) is not None:  # a union: one problem naming every kind of value it takes
        return Problem(where, f"'{dotted}' is {error['input']!r}", f"use {_alternatives(field.annotation)}")
    if error["type"] in PLAIN:
        field = _field(loc)
        default = (
            field.default
            if field is not None and field.default not in (None, [], {}) and not callable(field.default)
            else None
        )
        example = f" (the default is {_yaml_scalar(default)})" if isinstance(default, (bool, int, float, str)) else ""
        return Problem(
            where,
            f"'{dotted}' is {error['input']!r}, not {PLAIN[error['type']].split(',')[0]}",
            f"write {PLAIN[error['type']]}{example}",
        )
    if error["type"] in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        limit = next(iter((error.get("ctx") or {}).values()), "")
        word = {
            "greater_than_equal": "or more",
            "less_than_equal": "or less",
            "greater_than": "exclusive, more",
            "less_than": "exclusive, less",
        }
        if error["type"].endswith("_equal"):
            return Problem(where, f"'{dotted}' is {error['input']!r}", f"give {limit} {word[error['type']]}")
        return Problem(
            where,
            f"'{dotted}' is {error['input']!r}",
            f"give a value {'above' if 'greater' in error['type'] else 'below'} {limit}",
        )
    if error["type"] == "extra_forbidden":
        choices = _fields_at(PimlConfig, loc[:-1])
        return Problem(
            where, f"unknown setting '{dotted}'", did_you_mean(str(loc[-1]), choices) if choices else "remove it"
        )
    if error["type"] == "model_type":
        return Problem(where, f"'{dotted}' must be a mapping of settings", "indent its settings below it")
    if error["type"] == "literal_error":
        allowed = error.get("ctx", {}).get("expected", "")
        return Problem(where, f"'{dotted}' is {error['input']!r}", f"use {allowed}")
    if error["type"] == "string_type":
        return Problem(where, f"'{dotted}' must be text, not {error['input']!r}", "put the value in quotes")
    if error["type"] == "string_pattern_mismatch":
        return Problem(where, f"'{dotted}' is {error['input']!r}, not a valid value", _pattern_fix(error, _field(loc)))
    return Problem(where, f"'{dotted}': {error['msg'].lower()}", "see the comments in a new `piml init` piml.yaml")


def _pattern_fix(error: dict, field) -> str:
    """How to write a value that failed its pattern: like the default, else the pattern's hint."""
    if field is not None and isinstance(field.default, str):
        return f"write it like {field.default!r}"
    if (pattern := (error.get("ctx") or {}).get("pattern")) in PATTERN_HINTS:
        return f"write it {PATTERN_HINTS[pattern]}"
    return "see the comments in a new `piml init` piml.yaml"


def _yaml_scalar(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _field(loc: tuple):
    """The pydantic field at `loc` (through mappings such as serve.routes), or None."""
    *above, last = loc or (None,)
    annotation: Any = PimlConfig
    for key in above:
        annotation = _step(annotation, key)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.model_fields.get(str(last))
    return None


def parse_config(doc: YamlDoc) -> PimlConfig:
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        raise InputError(
            Problem(doc.where(), "piml.yaml must be a mapping of settings", "start with a key such as `mlflow:`")
        )
    try:
        return PimlConfig.model_validate(data)
    except ValidationError as exc:
        problems = list(dict.fromkeys(_problem(doc, e) for e in exc.errors()))  # a union's members: one problem
        raise InputError(by_line(problems)) from None


def load_config(path: Path, source: str | None = None) -> PimlConfig:
    """piml.yaml's settings; the defaults when the file does not exist."""
    if not Path(path).exists():
        return PimlConfig()
    return parse_config(read_yaml(path, source))


# Mappings whose entries have settings of their own (empty by default): the example `piml init` shows.
MAPPING_EXAMPLES = {"routes": ("iris", ServeRoute(model="models:/iris@champion"))}


def commented_defaults() -> str:
    """piml.yaml for a new project: every setting, commented out, at its default, with what it means."""
    lines = [
        "# piml platform settings. Every setting is shown at its default, commented out:",
        "# uncomment and change what you need. `piml inventory check` validates this file.",
    ]

    def emit(model: BaseModel, indent: int) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            pad = "  " * indent
            note = f"  # {field.description}" if field.description else ""
            if isinstance(value, Size):  # empty by default: one line, not a block of nulls
                lines.append(f"# {pad}{name}: {{}}  # requests/limits, e.g. {{requests: {{cpu: 500m, memory: 1Gi}}}}")
            elif isinstance(value, BaseModel):
                lines.append(f"# {pad}{name}:{note}")
                emit(value, indent + 1)
            elif name in MAPPING_EXAMPLES:  # a mapping, empty by default: an example entry with every key
                key, example = MAPPING_EXAMPLES[name]
                lines.append(f"# {pad}{name}:{note}")
                lines.append(f"# {pad}  {key}:")
                emit(example, indent + 2)
            else:
                import yaml

                text = (
                    yaml.safe_dump(value, default_flow_style=True)
                    .strip()
                    .removesuffix("\n...")
                    .removesuffix("...")
                    .strip()
                )
                lines.append(f"# {pad}{name}: {text}{note}")

    emit(PimlConfig(), 0)
    return "\n".join(lines) + "\n"
