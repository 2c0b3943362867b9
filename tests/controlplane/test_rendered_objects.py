"""Every shipped scenario's rendered platform, applied with piml's own code to the real API server (Kubernetes
v1.36.3, the one of the pinned k3s) by the control plane of this directory, as `piml up`'s platform stage applies
it: namespaces first, then the HelmCharts, then the rest, each with `piml.kube.apply.apply_object` over
`piml.kube.client.connect` and `piml.kube.discovery.Discovery`.

For each scenario in tests/render/scenarios (but cannot-fit.yml, which must not plan) and each settings case:
  (a) every object is accepted as rendered;
  (b) once the controllers have made their first writes, applying the same objects again changes nothing
      (apply_object says "unchanged", and nothing piml owns was written: same resourceVersion, or else the later
      write was another manager's). Found with it: KubeRay writes the whole RayCluster back when it adds its GCS
      finalizer (canonical quantities, a defaulted scaleStrategy in the atomic workerGroupSpecs list), and k3s's
      helm-controller a HelmChart (timeout 10m -> 10m0s): piml now renders them so;
  (c) nothing piml sent was dropped: every field of every rendered object is in what the server keeps, equal up
      to the server's canonical forms (a Secret's stringData -> data).
And a misspelled field is refused with one plain line naming the object and the field.

The control plane runs the real helm-controller and KubeRay operator (no KEDA operator); the CRDs are also
installed here from the real schemas in ../shared/schemas (HelmChart from k3s's helm-controller; RayCluster, RayJob
from KubeRay v1.7.0; ScaledJob from KEDA v2.20.2 — the chart versions piml pins). Traefik's CRDs (the Middleware
piml renders among them) are Traefik's own, installed by `up` as k3s's traefik-crd chart installs them
(traefik_crds.py), so a Middleware is checked against Traefik's schema, strictly, as every other object.
"""

from __future__ import annotations

import base64
import copy
import os
import re
import time
from pathlib import Path

import pytest
import yaml

from tests.controlplane.test_control_plane import GO, cp, until
from tests.crd_schemas import kuberay_module_crd

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "tests" / "render" / "scenarios"
# ../shared beside the checkout, as tests/render reads it: read there, never copied. PIML_SHARED overrides.
SCHEMAS = Path(os.environ.get("PIML_SHARED", REPO.parent / "shared")) / "schemas"
CRD_FILES = (
    "helm.cattle.io_helmcharts.yaml",
    "ray.io_rayclusters.yaml",
    "ray.io_rayjobs.yaml",
    "keda.sh_scaledjobs.yaml",
)
NOT_PLANNING = {"cannot-fit"}  # meant to fail planning: checked by test_cannot_fit_does_not_plan
# The settings cases of tests/render: the defaults, and every non-default store at once.
SETTINGS = {
    "defaults": {},
    "postgres-minio-rabbitmq": {
        "mlflow": {"backend": "postgresql", "artifacts": "minio"},
        "queue": {"kind": "rabbitmq"},
        "ray": {"gcs_fault_tolerance": True},
    },
    "serving": {"serve": {"enabled": True, "routes": {"iris": {"model": "models:/iris@champion", "max_replicas": 2}}}},
    "scheduled-backup": {
        "backup": {
            "schedule": "30 3 * * mon-fri",
            "time_zone": "Europe/Berlin",
            "keep": 3,
            "s3_uri": "s3://backups/piml/lab",
            "s3_endpoint_url": "http://nas.lan:3900",
            "s3_region": "garage",
        }
    },
    # the CronJob with its pg_dump init container, and PostgreSQL's NetworkPolicy letting it in
    "scheduled-backup-postgres": {"mlflow": {"backend": "postgresql"}, "backup": {"schedule": "@daily"}},
}
# The user's own keys, given as the README says (in .piml/secrets.yaml), for the cases that name their own stores.
USER_SECRETS = {"backup_s3_access_key": "GKbackup0000", "backup_s3_secret_key": "backup-secret-0000"}
# Cases only some scenarios need: serving on one architecture and on two (a worker group per architecture).
ONLY_ON = {
    "serving": {"pi5-3x8gb", "amd64-server-arm64-agents"},
    "scheduled-backup": {"single-node"},
    "scheduled-backup-postgres": {"single-node"},
}
CASES = [
    (s.stem, name)
    for s in sorted(SCENARIOS.glob("*.yml"))
    if s.stem not in NOT_PLANNING
    for name in SETTINGS
    if name not in ONLY_ON or s.stem in ONLY_ON[name]
]
DEFAULT_NAMESPACE_CASE = ("pi5-3x8gb", "defaults")  # keeps piml's own namespace, `piml`; the others get their own

pytestmark = pytest.mark.skipif(GO is None, reason="Go is not installed (needed to build the control plane)")


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    if not SCHEMAS.is_dir():
        pytest.fail(f"CRD schemas not found at {SCHEMAS}: put shared/ beside the checkout or set PIML_SHARED")
    build = cp("build", timeout=3 * 3600)  # cold: minutes once; then reused from the cache
    assert build.returncode == 0, build.stderr
    d = tmp_path_factory.mktemp("cp") / "plane"
    r = cp("up", str(d), "--nodes", "2", "--node-memory", "8Gi", "--arch", "arm64", timeout=300)
    assert r.returncode == 0, r.stderr
    yield d
    cp("down", str(d), timeout=60)


@pytest.fixture(scope="module")
def kube(plane):
    """piml's client on the control plane, with the operators' CRDs installed (by apply_object) and Established, and
    Traefik's (installed by `up`) Established."""
    from piml.kube.apply import apply_object
    from piml.kube.client import connect
    from piml.kube.discovery import Discovery

    k = connect(plane / "kubeconfig", request_timeout=10)
    crds = [yaml.safe_load((SCHEMAS / f).read_text()) for f in CRD_FILES]
    crds.append(yaml.safe_load(kuberay_module_crd("ray.io_rayservices.yaml").read_text()))
    bootstrap = Discovery(k)
    for crd in crds:
        apply_object(k, bootstrap, crd)

    def established(name: str) -> bool:
        live = k.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}") or {}
        return any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (live.get("status") or {}).get("conditions") or []
        )

    for name in [crd["metadata"]["name"] for crd in crds] + ["middlewares.traefik.io"]:  # Traefik's: from `up`
        until(f"CRD {name} Established", lambda name=name: established(name), 30)
    yield k
    k.close()


@pytest.fixture(scope="module")
def discovery(kube):
    from piml.kube.discovery import Discovery

    d = Discovery(kube)

    def all_served() -> bool:
        missing = [
            (v, k)
            for v, k in (
                ("helm.cattle.io/v1", "HelmChart"),
                ("ray.io/v1", "RayCluster"),
                ("ray.io/v1", "RayJob"),
                ("ray.io/v1", "RayService"),
                ("keda.sh/v1alpha1", "ScaledJob"),
                ("traefik.io/v1alpha1", "Middleware"),
            )
            if not d.served(v, k)
        ]
        for v, _ in missing:
            d.forget(v)
        return not missing

    until("the CRDs' kinds served", all_served, 30)
    return d


def render(tmp_path: Path, scenario: str, settings: dict, namespace: str | None = None) -> list[dict]:
    """The platform as `piml up` renders it: Cluster -> make_plan -> render_platform, with generated secrets."""
    from piml.config import PimlConfig
    from piml.inventory import load_inventory
    from piml.plan import make_plan
    from piml.project import Cluster, ProjectPaths
    from piml.render import render_platform
    from piml.secrets import load_or_create

    path = SCENARIOS / f"{scenario}.yml"
    root = tmp_path / "lab"
    root.mkdir()
    config = {**settings, **({"namespace": namespace} if namespace else {})}
    cluster = Cluster(ProjectPaths(root, path), load_inventory(path), PimlConfig.model_validate(config))
    (root / ".piml").mkdir(mode=0o700)
    (root / ".piml" / "secrets.yaml").write_text(yaml.safe_dump(USER_SECRETS))
    rendered = render_platform(cluster, make_plan(cluster), load_or_create(root / ".piml"))
    return [obj for r in rendered for obj in r.objects]


def in_apply_order(objects: list[dict]) -> list[dict]:
    """piml.kube.deploy's order: Namespaces, HelmCharts, then the rest as rendered (every kind is served here)."""
    return (
        [o for o in objects if o["kind"] == "Namespace"]
        + [o for o in objects if o["kind"] == "HelmChart"]
        + [o for o in objects if o["kind"] not in ("Namespace", "HelmChart")]
    )


def live_path(discovery, obj: dict) -> str:
    meta = obj["metadata"]
    return discovery.resource(obj["apiVersion"], obj["kind"]).path(meta.get("namespace"), meta["name"])


def name_of(obj: dict) -> str:
    meta = obj["metadata"]
    return (
        f"{obj['kind']} {meta['namespace']}/{meta['name']}"
        if meta.get("namespace")
        else f"{obj['kind']} {meta['name']}"
    )


QUANTITY_PARENTS = {"requests", "limits"}  # resources.requests/limits: the API keeps quantities in canonical form


def dropped(sent, kept, path: str = "") -> list[str]:
    """Where what was sent is not in what the server keeps (or differs), up to its canonical forms."""
    from kubernetes.utils import parse_quantity

    if isinstance(sent, dict):
        if not isinstance(kept, dict):
            return [f"{path or '.'}: sent a mapping, the server keeps {type(kept).__name__}"]
        out = []
        for key, value in sent.items():
            if key not in kept:
                out.append(f"{path}.{key}: sent, not kept")
            else:
                out += dropped(value, kept[key], f"{path}.{key}")
        return out
    if isinstance(sent, list):
        if not isinstance(kept, list) or len(kept) != len(sent):
            return [
                f"{path}: sent a list of {len(sent)}, the server keeps "
                f"{kept if not isinstance(kept, list) else len(kept)}"
            ]
        return [d for i, (a, b) in enumerate(zip(sent, kept, strict=True)) for d in dropped(a, b, f"{path}[{i}]")]
    if sent == kept:
        return []
    parent = path.split(".")[-2] if path.count(".") >= 2 else ""
    if parent in QUANTITY_PARENTS or path.endswith(".sizeLimit"):
        try:
            if parse_quantity(sent) == parse_quantity(kept):
                return []
        except ValueError:
            pass
    return [f"{path}: sent {sent!r}, the server keeps {kept!r}"]


def dropped_from(obj: dict, live: dict) -> list[str]:
    sent, kept = copy.deepcopy(obj), copy.deepcopy(live)
    if obj["kind"] == "Secret":
        # stringData is write-only: the server stores it base64-encoded in data. Values are never shown.
        data = kept.get("data", {})
        problems = [
            f".stringData.{k}: not in data, or not what was sent"
            for k, v in sent.pop("stringData", {}).items()
            if k not in data or base64.b64decode(data[k]).decode() != v
        ]
        return problems + [p.split(": sent", 1)[0] + ": differs (value not shown)" for p in dropped(sent, kept)]
    return dropped(sent, kept)


def pimls_entry(live: dict) -> list[dict]:
    return [m for m in live["metadata"].get("managedFields", []) if m.get("manager") == "piml"]


def test_every_scenario_is_covered():
    stems = {s.stem for s in SCENARIOS.glob("*.yml")}
    assert NOT_PLANNING <= stems and len(stems - NOT_PLANNING) >= 4, stems
    assert {s for s, _ in CASES} == stems - NOT_PLANNING


def test_cannot_fit_does_not_plan(tmp_path):
    from piml.errors import InputError

    with pytest.raises(InputError) as info:
        render(tmp_path, "cannot-fit", {})
    assert "does not fit" in str(info.value)


@pytest.mark.parametrize("scenario,settings_name", CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_rendered_platform_is_accepted_kept_and_reapplied_unchanged(scenario, settings_name, kube, discovery, tmp_path):
    from piml.errors import PimlError
    from piml.kube.apply import apply_object

    namespace = None if (scenario, settings_name) == DEFAULT_NAMESPACE_CASE else f"{scenario}-{settings_name}"[:63]
    objects = in_apply_order(render(tmp_path, scenario, SETTINGS[settings_name], namespace))
    kinds = {o["kind"] for o in objects}
    assert {
        "Namespace",
        "HelmChart",
        "Deployment",
        "Service",
        "Secret",
        "RayCluster",
        "ScaledJob",
        "Middleware",
        "Ingress",
    } <= kinds, kinds

    # (a) every object accepted as rendered
    refused, first = [], {}
    for obj in objects:
        try:
            first[name_of(obj)] = apply_object(kube, discovery, obj).action
        except PimlError as exc:
            refused.append(str(exc))
    assert not refused, "refused by the API server:\n" + "\n".join(refused)
    # The HelmCharts live in kube-system and are shared by every case here; the rest is new.
    assert all(a == "created" for n, a in first.items() if not n.startswith("HelmChart")), first

    if "RayService" in kinds:  # the real KubeRay operator takes the RayService up: valid by its own rules too
        ns = namespace or "piml"
        made = until("KubeRay made the RayService's cluster", lambda: rayservice_cluster(kube, ns), 60)
        # KubeRay copies the RayService's labels, piml's among them, onto the RayCluster it makes: piml's prune
        # must not take it for a piml object that no longer renders (it is owned, so left to its owner)
        from piml.kube.prune import project_objects

        labels = kube.get(f"/apis/ray.io/v1/namespaces/{ns}/rayclusters/{made}")["metadata"]["labels"]
        project = objects[0]["metadata"]["labels"]["piml.io/project"]
        assert labels.get("piml.io/project") == project
        assert made not in {o["metadata"]["name"] for o in project_objects(kube, discovery, project)}
        # what `piml status` says of it while KubeRay cannot reach a Serve (no real Ray here): not ready, and why
        from piml.kube.status import workload_rows

        def with_conditions():
            live = kube.get(f"/apis/ray.io/v1/namespaces/{ns}/rayservices/piml-serve") or {}
            return live if (live.get("status") or {}).get("conditions") else None

        live_service = until("KubeRay's first RayService status", with_conditions, 30)
        (row,) = workload_rows(live_service)
        assert (row["component"], row["ready"], row["state"]) == ("serve", False, "Initializing"), live_service

    # (c) nothing sent was dropped
    live = {name_of(o): kube.get(live_path(discovery, o)) for o in objects}
    lost = [f"{n}: {p}" for o in objects for n in [name_of(o)] for p in dropped_from(o, live[n])]
    assert not lost, "sent but not kept by the API server:\n" + "\n".join(lost)

    # (b) a second apply changes nothing, once the controllers have done their first writes (a user's second
    # `piml up` comes minutes later; KubeRay adds its GCS finalizer, the helm-controller takes its charts)
    settle(kube, discovery, objects)
    changed = []
    for obj in objects:
        path = live_path(discovery, obj)
        before = kube.get(path)
        applied = apply_object(kube, discovery, obj)
        after = kube.get(path)
        rv_before, rv_after = before["metadata"]["resourceVersion"], after["metadata"]["resourceVersion"]
        if applied.action != "unchanged":
            changed.append(f"{applied.ref}: {applied.action}")
        elif rv_before != rv_after and (
            pimls_entry(before) != pimls_entry(after)
            or before["metadata"].get("generation") != after["metadata"].get("generation")
        ):
            # A controller may write an object meanwhile (the PV controller annotates PVCs): only piml's part counts.
            changed.append(f"{applied.ref}: written again (resourceVersion {rv_before} -> {rv_after})")
    assert not changed, "the second apply changed:\n" + "\n".join(changed)


def rayservice_cluster(kube, ns: str) -> str | None:
    """The RayCluster KubeRay made for the RayService piml-serve; fails at once on a refusal by its validation."""
    live = kube.get(f"/apis/ray.io/v1/namespaces/{ns}/rayservices/piml-serve") or {}
    refused = [c for c in (live.get("status") or {}).get("conditions") or [] if c.get("reason") == "ValidationFailed"]
    assert not refused, f"KubeRay refused the RayService: {refused}"
    clusters = (kube.get(f"/apis/ray.io/v1/namespaces/{ns}/rayclusters") or {}).get("items") or []
    owned = [
        c["metadata"]["name"]
        for c in clusters
        if any(
            r["kind"] == "RayService" and r["name"] == "piml-serve" for r in c["metadata"].get("ownerReferences", [])
        )
    ]
    return owned[0] if owned else None


def settle(kube, discovery, objects, quiet: float = 2.0, bound: float = 30.0) -> None:
    """Wait (at most `bound` s) until no object's resourceVersion moved for `quiet` s."""

    def versions():
        return {
            name_of(o): (kube.get(live_path(discovery, o)) or {}).get("metadata", {}).get("resourceVersion")
            for o in objects
        }

    deadline = time.monotonic() + bound
    seen = versions()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = versions()
        if now == seen:
            return
        seen = now


def _misspell_container_field(objects):
    obj = next(o for o in objects if o["kind"] == "Deployment")
    obj["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    container = obj["spec"]["template"]["spec"]["containers"][0]["name"]
    return obj, f'spec.template.spec.containers[name="{container}"].imagePullPolicyy'


def _misspell_ray_head(objects):
    obj = next(o for o in objects if o["kind"] == "RayCluster")
    obj["spec"]["headGroupSpecc"] = obj["spec"].pop("headGroupSpec")
    return obj, "spec.headGroupSpecc"


def _misspell_scaledjob_template_metadata(objects):
    # A pod template's metadata in a CRD is an object without properties: without a strict server it would be
    # pruned in silence.
    obj = next(o for o in objects if o["kind"] == "ScaledJob")
    obj["spec"]["jobTargetRef"]["template"].setdefault("metadata", {})["labelz"] = {"a": "b"}
    return obj, "spec.jobTargetRef.template.metadata.labelz"


def _misspell_middleware(objects):
    # Traefik's own schema (installed by `up`): a Middleware's fields are checked, not just accepted.
    obj = next(o for o in objects if o["kind"] == "Middleware")
    obj["spec"]["stripPrefix"]["prefixez"] = obj["spec"]["stripPrefix"].pop("prefixes")
    return obj, "spec.stripPrefix.prefixez"


@pytest.mark.parametrize(
    "misspell",
    [_misspell_container_field, _misspell_ray_head, _misspell_scaledjob_template_metadata, _misspell_middleware],
    ids=[
        "Deployment-imagePullPolicyy",
        "RayCluster-headGroupSpecc",
        "ScaledJob-template-labelz",
        "Middleware-stripPrefix-prefixez",
    ],
)
def test_a_misspelled_field_is_refused_in_one_line(misspell, kube, discovery, tmp_path):
    from piml.errors import PimlError
    from piml.kube.apply import apply_object

    objects = render(tmp_path, "pi5-3x8gb", {}, "typos")
    apply_object(kube, discovery, next(o for o in objects if o["kind"] == "Namespace"))
    obj, field = misspell(objects)
    with pytest.raises(PimlError) as info:
        apply_object(kube, discovery, obj)
    line = str(info.value)
    assert "\n" not in line and "Traceback" not in line, line
    assert line.startswith(
        f"{name_of(obj)}: the cluster refused it: unknown field {field} "
        f"(not in the schema of {obj['kind']} ({obj['apiVersion']}))"
    ), line
    assert "please report it" in line
    assert kube.get(live_path(discovery, obj)) is None  # nothing was made of it


def test_a_mistyped_field_is_refused_in_one_line(kube, discovery, tmp_path):
    from piml.errors import PimlError
    from piml.kube.apply import apply_object

    objects = render(tmp_path, "pi5-3x8gb", {}, "typos")
    apply_object(kube, discovery, next(o for o in objects if o["kind"] == "Namespace"))
    obj = next(o for o in objects if o["kind"] == "Deployment")
    obj["metadata"]["name"] = "mistyped"
    obj["spec"]["replicas"] = "two"
    with pytest.raises(PimlError) as info:
        apply_object(kube, discovery, obj)
    line = str(info.value)
    assert re.match(
        r"Deployment typos/mistyped: the cluster refused it: field spec\.replicas: expected numeric", line
    ), line
    assert "\n" not in line


def test_a_strict_servers_400_is_read_as_well(kube, discovery, tmp_path):
    """What a server that validates an apply strictly answers (as v1.36.3 does for a create with
    fieldValidation=Strict): 400 'strict decoding error: unknown field "PATH"'. piml reads the field from it too."""
    from piml.kube.apply import refusal
    from piml.kube.client import KubeError
    from piml.kube.objects import ref

    objects = render(tmp_path, "pi5-3x8gb", {}, "typos")
    obj = next(o for o in objects if o["kind"] == "RayCluster")
    obj["metadata"]["name"] = "strict-create"
    obj["spec"]["headGroupSpecc"] = {}
    collection = discovery.resource(obj["apiVersion"], obj["kind"]).path("typos")
    with pytest.raises(KubeError) as info:
        kube.request("POST", collection, {"fieldValidation": "Strict"}, obj)
    assert (
        info.value.status == 400 and 'strict decoding error: unknown field "spec.headGroupSpecc"' in info.value.message
    )
    assert refusal(info.value, ref(obj)) == (
        "the cluster refused it: unknown field spec.headGroupSpecc (not in the schema of RayCluster (ray.io/v1))"
    )


def test_apply_asks_for_strict_field_validation(kube, discovery, tmp_path):
    from piml.kube.apply import apply_object

    class Recording:
        def __init__(self, inner):
            self.inner, self.patches = inner, []

        def get(self, *args, **kwargs):
            return self.inner.get(*args, **kwargs)

        def request(self, method, path, query=None, *args, **kwargs):
            if method == "PATCH":
                self.patches.append(query)
            return self.inner.request(method, path, query, *args, **kwargs)

    recording = Recording(kube)
    namespace = next(o for o in render(tmp_path, "pi5-3x8gb", {}, "typos") if o["kind"] == "Namespace")
    apply_object(recording, discovery, namespace)
    assert recording.patches == [{"fieldManager": "piml", "force": "true", "fieldValidation": "Strict"}]


def test_the_comparison_sees_what_was_dropped():
    """The check of (c) itself: a field missing or different is reported, canonical forms are not; a Secret's
    values never appear in what it reports."""
    sent = {
        "kind": "Deployment",
        "spec": {
            "replicas": 1,
            "paused": False,
            "template": {
                "spec": {"containers": [{"name": "a", "resources": {"limits": {"cpu": "1000m", "memory": "1024Mi"}}}]}
            },
        },
    }
    kept = {
        "kind": "Deployment",
        "spec": {
            "replicas": 2,
            "template": {
                "spec": {
                    "containers": [{"name": "a", "image": "x", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]
                }
            },
        },
    }
    assert dropped_from(sent, kept) == [".spec.replicas: sent 1, the server keeps 2", ".spec.paused: sent, not kept"]
    secret = {"kind": "Secret", "stringData": {"password": "s3cret", "token": "t0ken"}, "type": "Opaque"}
    live = {"kind": "Secret", "data": {"password": base64.b64encode(b"s3cret").decode()}, "type": "kubernetes.io/tls"}
    report = dropped_from(secret, live)
    assert report == [".stringData.token: not in data, or not what was sent", ".type: differs (value not shown)"]
    assert "s3cret" not in str(report) and "t0ken" not in str(report)


# Schedules piml takes and refuses (piml.config.cron_problem), each put to the real API server as a CronJob: the two
# must agree, so a schedule piml.yaml accepts is never refused at apply time, and one it refuses really is invalid.
SCHEDULES = [
    "30 3 * * *", "@daily", "@hourly", "@every 1h30m", "*/15 * * * *", "0 0 1,15 * *", "0 22 * * mon-fri",
    "0 0 * jan-mar sun", "5/10 * * * *", "0 0 ? * *",
    "61 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * * 7", "5-1 * * * *", "*/0 * * * *",
    "* * * *", "* * * * * *", "@fortnightly", "TZ=UTC 0 1 * * *", "CRON_TZ=UTC 0 1 * * *", "x * * * *",
]  # fmt: skip


def test_piml_reads_cron_schedules_as_the_api_server_does(kube):
    from piml.config import cron_problem
    from piml.kube.client import KubeError

    disagree = []
    for schedule in SCHEDULES:
        job = {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "schedule-check", "namespace": "default"},
            "spec": {
                "schedule": schedule,
                "jobTemplate": {"spec": {"template": {"spec": {
                    "restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox:1.36"}]}}}},
            },
        }  # fmt: skip
        try:
            kube.request("POST", "/apis/batch/v1/namespaces/default/cronjobs", {"dryRun": "All"}, body=job)
            server = None
        except KubeError as exc:
            assert exc.status == 422, exc
            server = str(exc)
        mine = cron_problem(schedule)
        if (mine is None) != (server is None):
            disagree.append(f"{schedule!r}: piml says {mine or 'valid'}; the API server says {server or 'valid'}")
    assert not disagree, "\n".join(disagree)
