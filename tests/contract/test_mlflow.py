"""MLflow as rendered, run as ghcr.io/mlflow/mlflow runs it, reached the four ways the cluster reaches it:
the kubelet's probe, other pods by every Service name form, browsers through the ingress, piml through a
port-forward."""

from __future__ import annotations

import json

import pytest

from piml.health.endpoints import Endpoints
from piml.health.probes import mlflow_rows
from tests.contract.kubelet import http_get
from tests.contract.platform import basic, start_platform

pytestmark = pytest.mark.contract

SCENARIOS = {
    "default": ("pi5-3x8gb", {}),
    "postgresql-minio": ("pi5-3x8gb", {"mlflow": {"backend": "postgresql", "artifacts": "minio"}}),
    "amd64-server": ("amd64-server-arm64-agents", {}),
}


@pytest.fixture(scope="module", params=SCENARIOS, ids=SCENARIOS)
def mlflow_pod(request, pod_network, tmp_path_factory):
    scenario, settings = SCENARIOS[request.param]
    platform = start_platform(scenario, settings, tmp_path_factory.mktemp("mlflow"), pod_network)
    try:
        if any(o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow-postgres" for o in platform.objects):
            postgres = platform.deployment("mlflow-postgres")
            platform.kubelet.wait_probe(postgres.container(), "readinessProbe", budget=120)
        if any(o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow-minio" for o in platform.objects):
            print("stand-in: moto's S3 server for MinIO, which cannot be had here")
            platform.s3_standin_for_minio()
        pod = platform.deployment("mlflow")
        yield platform, pod
    finally:
        platform.close()


def test_readiness_probe_as_the_kubelet_sends_it(mlflow_pod):
    platform, pod = mlflow_pod
    seconds = platform.kubelet.wait_probe(pod.container("mlflow"), "readinessProbe", budget=120)
    print(f"mlflow ready after {seconds:.1f} s")


def test_the_store_is_migrated_before_the_server_starts(mlflow_pod):
    platform, pod = mlflow_pod
    sqlite = "--backend-store-uri=sqlite:////mlflow/mlflow.db" in pod.container("mlflow").spec["args"]
    wanted = [("extra-packages", 0), ("db-upgrade", 0)] if sqlite else [("extra-packages", 0)]
    assert pod.init_results == wanted
    if sqlite:  # on the empty volume `mlflow db upgrade` made the store, and the server took it as current
        assert (pod.mounts["data"] / "mlflow.db").stat().st_size > 0


def test_init_container_installs_only_what_is_missing(mlflow_pod):
    platform, pod = mlflow_pod
    extra = pod.mounts["extra"]
    installed = sorted(p.name for p in extra.iterdir() if p.name.endswith(".dist-info"))
    image_has = {
        p.name.split("-")[0].lower()
        for p in platform.mirrors[pod.container().spec["image"]].bin.parent.glob(
            "lib/python*/site-packages/*.dist-info"
        )
    }
    again = [name for name in installed if name.split("-")[0].lower() in image_has]
    assert not again, f"the init container installs again what the image has (shadowing it via PYTHONPATH): {again}"


def _ui_requests(platform, pod, host: str):
    """What a browser sends through Traefik: Host as typed, X-Forwarded-*, Origin on POSTs, basic auth."""
    auth = basic("admin", platform.secret("mlflow", "admin-password"))
    forwarded = {
        "Host": host,
        "X-Forwarded-For": "192.0.2.10",
        "X-Forwarded-Host": host,
        "X-Forwarded-Port": "80",
        "X-Forwarded-Proto": "http",
        "X-Real-Ip": "192.0.2.10",
        "Authorization": auth,
    }
    origin = {"Origin": f"http://{host}", "Content-Type": "application/json"}
    search = json.dumps({"max_results": 1}).encode()
    return [
        ("GET", "/mlflow/", forwarded, None),
        ("GET", "/mlflow/ajax-api/2.0/mlflow/experiments/search?max_results=1", forwarded, None),
        ("POST", "/mlflow/ajax-api/2.0/mlflow/experiments/search", {**forwarded, **origin}, search),
        (
            "POST",
            "/mlflow/ajax-api/2.0/mlflow/experiments/create",
            {**forwarded, **origin},
            json.dumps({"name": f"from-the-ui-{host}"}).encode(),
        ),
    ]


def test_browsers_through_the_ingress(mlflow_pod):
    platform, pod = mlflow_pod
    platform.kubelet.wait_probe(pod.container("mlflow"), "readinessProbe", budget=120)
    failures = []
    for host in platform.node_addresses + platform.node_names:
        for method, path, headers, body in _ui_requests(platform, pod, host):
            ok, answer = http_get(pod.ip, 5000, path, headers, timeout=30, method=method, body=body)
            if not ok:
                failures.append(f"{method} {path} Host: {host}: {answer[:160]}")
    assert not failures, "\n".join(failures)


def test_other_pods_by_every_service_name(mlflow_pod):
    """A pod with the env piml gives Ray, Dask and runner pods, using MLflow's own client, each name form."""
    platform, pod = mlflow_pod
    platform.kubelet.wait_probe(pod.container("mlflow"), "readinessProbe", budget=120)
    client = _client_pod(platform)
    ns = platform.ns
    forms = [f"mlflow{s}" for s in ("", f".{ns}", f".{ns}.svc", f".{ns}.svc.cluster.local")]
    script = (
        "import sys, mlflow\n"
        "bad = []\n"
        "for host in sys.argv[1:]:\n"
        "    client = mlflow.MlflowClient(tracking_uri=f'http://{host}:5000/mlflow')\n"
        "    try:\n"
        "        client.search_experiments(max_results=1)\n"
        "        client.create_experiment(f'from-{host}')\n"
        "    except Exception as e:\n"
        "        bad.append(f'{host}: {str(e)[:200]}')\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = platform.kubelet.exec(
        client, ["python", "-c", script, *forms], timeout=180, env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    # The URL piml renders for the pods is one of these, and it works as given.
    assert client.container().env["MLFLOW_TRACKING_URI"] == f"http://mlflow.{ns}.svc:5000/mlflow"


def test_artifacts_through_the_servers_proxy(mlflow_pod):
    """A pod logs an artifact through MLflow (mlflow-artifacts:), the server stores it in the configured store
    (the volume, or S3 with the boto3 its init container installed) and serves it back."""
    platform, pod = mlflow_pod
    platform.kubelet.wait_probe(pod.container("mlflow"), "readinessProbe", budget=120)
    client = _client_pod(platform, "artifact-client")
    script = (
        "import mlflow, tempfile, pathlib\n"
        "mlflow.set_experiment('artifacts')\n"
        "with mlflow.start_run() as run:\n"
        "    mlflow.log_text('piml contract', 'note.txt')\n"
        "local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path='note.txt', dst_path=tempfile.mkdtemp())\n"
        "assert pathlib.Path(local).read_text() == 'piml contract'\n"
        "print(mlflow.get_run(run.info.run_id).info.artifact_uri)\n"
    )
    result = platform.kubelet.exec(
        client, ["python", "-c", script], timeout=180, env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:] + pod.container("mlflow").tail(2000)
    assert result.stdout.strip().splitlines()[-1].startswith("mlflow-artifacts:/"), result.stdout
    if platform.cluster.config.mlflow.artifacts == "minio":  # the object really is in the bucket
        store = next(p for p in platform.kubelet.pods if p.name == "mlflow-minio-0")
        listing = platform.kubelet.exec(
            store,
            [
                "python",
                "-c",
                (
                    "import os, boto3; s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:9000', region_name='us-east-1', "
                    "aws_access_key_id=os.environ['MINIO_ROOT_USER'], aws_secret_access_key=os.environ['MINIO_ROOT_PASSWORD']); "
                    "print([o['Key'] for o in s3.list_objects_v2(Bucket='mlflow').get('Contents', [])])"
                ),
            ],
            timeout=60,
        )
        assert "note.txt" in listing.stdout, listing.stdout + listing.stderr


def _client_pod(platform, name: str = "mlflow-client"):
    """A pod running the MLflow image with the runner's env (MLflow's address and credentials from its Secret)."""
    obj = platform.kubelet.find("ScaledJob", "piml-runner", platform.ns)
    template = obj["spec"]["jobTargetRef"]["template"]
    runner = dict(template["spec"]["containers"][0])
    runner.update(command=["sleep", "3600"], volumeMounts=[])
    runner.pop("args", None)
    spec = {"containers": [runner], "volumes": []}
    labels = {**template["metadata"]["labels"], "job-name": "client"}
    return platform.kubelet.start(name, platform.ns, labels, spec)


def test_piml_through_a_port_forward(mlflow_pod):
    platform, pod = mlflow_pod
    platform.kubelet.wait_probe(pod.container("mlflow"), "readinessProbe", budget=120)
    forward = platform.forward(pod, 5000)
    endpoints = Endpoints(
        mlflow_url=f"{forward.url}/mlflow",
        mlflow_user="admin",
        mlflow_password=platform.secret("mlflow", "admin-password"),
    )
    rows = mlflow_rows(endpoints, platform.cluster.config)
    failed = [str(r) for r in rows if r.status != "pass"]
    assert not failed, failed
