"""A rendered platform, run by the contract kubelet: render a scenario exactly as `piml up` would apply it
(Secrets with their values), then start its workloads' pods and reach them the ways the cluster does."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

from piml.config import PimlConfig
from piml.inventory import load_inventory
from piml.plan import make_plan
from piml.project import Cluster, ProjectPaths
from piml.render import render_platform
from piml.secrets import load_or_create
from tests.contract import images, kuberay
from tests.contract.kubelet import Kubelet, Pod, http_get
from tests.contract.netns import Network, PortForward
from tests.podspecs import pod_specs

SCENARIOS_DIR = Path(__file__).resolve().parents[1] / "render" / "scenarios"


@dataclass
class Platform:
    cluster: Cluster
    objects: list[dict]
    secrets: dict[str, str]
    kubelet: Kubelet
    mirrors: dict[str, images.Mirror]
    forwards: list[PortForward] = field(default_factory=list)
    ray_built: dict = field(default_factory=dict)  # KubeRay's Pods and Service for the RayCluster

    @property
    def ns(self) -> str:
        return self.cluster.config.namespace

    @property
    def node_addresses(self) -> list[str]:
        return [n.address for n in self.cluster.inventory.cluster_nodes]

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.cluster.inventory.cluster_nodes]

    def deployment(self, name: str, extra_env: dict | None = None) -> Pod:
        """Start the pod of a rendered Deployment."""
        obj = self.kubelet.find("Deployment", name, self.ns)
        template = obj["spec"]["template"]
        return self.kubelet.start(f"{name}-0", self.ns, template["metadata"]["labels"], template["spec"], extra_env)

    def s3_standin_for_minio(self) -> Pod:
        """MinIO cannot run here (see images.S3_STANDIN): moto's S3 server in a pod the mlflow-minio Service selects,
        and the bucket MinIO's postStart hook would make, made with the Secret's keys."""
        obj = self.kubelet.find("Deployment", "mlflow-minio", self.ns)
        template = obj["spec"]["template"]
        minio = template["spec"]["containers"][0]
        spec = {
            "containers": [
                {
                    "name": "minio",
                    "image": images.S3_STANDIN,
                    "env": minio["env"],
                    "ports": minio["ports"],
                    "command": ["moto_server", "-H", "0.0.0.0", "-p", "9000"],
                }
            ]
        }
        pod = self.kubelet.start("mlflow-minio-0", self.ns, template["metadata"]["labels"], spec)
        # What MinIO's postStart hook does (`mc mb local/mlflow` against 127.0.0.1:9000), inside the pod, bounded.
        make_bucket = (
            "import os, time, boto3\n"
            "s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:9000', region_name='us-east-1',\n"
            "                  aws_access_key_id=os.environ['MINIO_ROOT_USER'], aws_secret_access_key=os.environ['MINIO_ROOT_PASSWORD'])\n"
            "for _ in range(120):\n"
            "    try:\n"
            "        s3.create_bucket(Bucket='mlflow'); break\n"
            "    except Exception:\n"
            "        time.sleep(0.5)\n"
            "else:\n"
            "    raise SystemExit('the S3 stand-in never answered')\n"
        )
        result = self.kubelet.exec(pod, ["python", "-c", make_bucket], timeout=90)
        if result.returncode:
            raise RuntimeError(f"the bucket could not be made: {result.stderr[-1000:]}")
        return pod

    def s3_outside(self, host: str = "nas", domain: str = "lan", port: int = 3900, bucket: str = "pi-backups"):
        """The user's own S3 store off the cluster, reached as http://HOST.DOMAIN:PORT (a Service `host` in the
        namespace `domain`, so pods resolve that name): moto's S3 server with its signature checks on, a bucket and
        a user who may use it (tests/services.py). Returns (the pod, its access key, its secret key)."""
        import json

        from tests.services import S3_SETUP, S3_SETUP_REQUESTS

        self.mirrors.setdefault(images.S3_STANDIN, images.s3_standin())
        images.NOTES.add("moto's S3 server stands in for the user's own S3 store (no S3 server can be had here)")
        labels = {"app": f"{host}-s3"}
        self.kubelet.objects.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": host, "namespace": domain},
                "spec": {"selector": labels, "ports": [{"name": "s3", "port": port, "targetPort": port}]},
            }
        )
        spec = {
            "containers": [
                {
                    "name": "s3",
                    "image": images.S3_STANDIN,
                    "env": [
                        {"name": "INITIAL_NO_AUTH_ACTION_COUNT", "value": str(S3_SETUP_REQUESTS)},
                        # path-style only, as MinIO or Garage without a domain set: moto would otherwise take
                        # the `nas` of nas.lan for a bucket's name (virtual-hosted style)
                        {"name": "S3_IGNORE_SUBDOMAIN_BUCKETNAME", "value": "true"},
                    ],
                    "ports": [{"name": "s3", "containerPort": port}],
                    "command": ["moto_server", "-H", "0.0.0.0", "-p", str(port)],
                }
            ]
        }
        pod = self.kubelet.start(f"{host}-s3-0", domain, labels, spec)
        wait = (  # moto_server takes a few seconds to listen
            "import socket, time\n"
            "for _ in range(120):\n"
            "    try:\n"
            f"        socket.create_connection(('127.0.0.1', {port}), 1).close(); break\n"
            "    except OSError:\n"
            "        time.sleep(0.5)\n"
        )
        made = self.kubelet.exec(
            pod, ["python", "-c", wait + S3_SETUP, f"http://127.0.0.1:{port}", bucket], timeout=120
        )
        if made.returncode:
            raise RuntimeError(f"the S3 store could not be set up: {made.stderr[-1000:]}")
        access, secret = json.loads(made.stdout.strip().splitlines()[-1])
        return pod, access, secret

    def job_pod(self, scaled_job: str, job_name: str) -> Pod:
        """A pod of the Job that KEDA makes from a ScaledJob (its jobTargetRef template, the Job's labels)."""
        obj = self.kubelet.find("ScaledJob", scaled_job, self.ns)
        template = obj["spec"]["jobTargetRef"]["template"]
        labels = {
            **template["metadata"].get("labels", {}),
            "job-name": job_name,
            "batch.kubernetes.io/job-name": job_name,
        }
        return self.kubelet.start(f"{job_name}-x", self.ns, labels, template["spec"])

    def ray_cluster(self, worker_groups: int = 1, kind: str = "RayCluster", name: str = "ray") -> tuple[Pod, list[Pod]]:
        """The RayCluster's (or a RayService's) head and one worker per group, as KubeRay builds their Pods and
        head Service.

        The head's `autoscaler` sidecar is not started: it is a Kubernetes client of the API server (it
        patches the RayCluster), which these tests do not have."""
        cluster = self.kubelet.find(kind, name, self.ns)
        built = self.ray_built = kuberay.operator_objects(cluster)
        self.kubelet.objects.append(built["headService"])
        head_pod = self.ray_head()
        workers = []
        for group, pod in list(built["workers"].items())[:worker_groups]:
            workers.append(self.kubelet.start(f"ray-{group}-0", self.ns, pod["metadata"]["labels"], pod["spec"]))
        return head_pod, workers

    def ray_head(self, name: str = "ray-head-0") -> Pod:
        """(Re)start the head pod KubeRay built, as the operator does when the head pod is gone."""
        head = self.ray_built["head"]
        images.NOTES.add("not run: the Ray head's autoscaler sidecar (a client of the Kubernetes API server)")
        spec = dict(head["spec"])
        spec["containers"] = [c for c in spec["containers"] if c["name"] != "autoscaler"]
        return self.kubelet.start(name, self.ns, head["metadata"]["labels"], spec)

    def ray_dashboard(self, head: Pod, method: str = "GET", path: str = "/api/jobs/", body: dict | None = None):
        """The parsed answer (None when empty) of the head's dashboard API, reached at the pod's address with the
        project's Ray token, as KubeRay's dashboard client reaches it; AssertionError naming the request otherwise."""
        token = self.secret("ray-auth", "auth_token")
        headers = {"Host": f"{head.ip}:8265", "Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        data = json.dumps(body).encode() if body is not None else None
        ok, answer = http_get(head.ip, 8265, path, headers, timeout=30, method=method, body=data, limit=1 << 20)
        assert ok, f"{method} {path}: {answer[:300]}"
        text = answer.partition(" ")[2]
        return json.loads(text) if text.strip() else None

    def job_pod_preview(self, scaled_job: str):
        """The scaled Job's main container with its env resolved, not started (what KEDA reads *FromEnv from)."""
        obj = self.kubelet.find("ScaledJob", scaled_job, self.ns)
        template = obj["spec"]["jobTargetRef"]["template"]
        return self.kubelet.preview(
            f"{scaled_job}-preview", self.ns, template["metadata"].get("labels", {}), template["spec"]
        )

    def forward(self, pod: Pod, port: int) -> PortForward:
        forward = PortForward(pod.netns, port)
        self.forwards.append(forward)
        return forward

    def secret(self, name: str, key: str) -> str:
        return self.kubelet.secret_value(name, key, self.ns)

    def close(self) -> None:
        for forward in self.forwards:
            forward.close()
        self.kubelet.close()


def render(scenario: str, settings: dict, project: Path) -> tuple[Cluster, list[dict], dict[str, str]]:
    path = SCENARIOS_DIR / f"{scenario}.yml"
    cluster = Cluster(ProjectPaths(project, path), load_inventory(path), PimlConfig.model_validate(settings))
    secrets = load_or_create(project / ".piml")
    objects = [obj for rendered in render_platform(cluster, make_plan(cluster), secrets) for obj in rendered.objects]
    return cluster, objects, secrets


def images_used(objects: list[dict]) -> set[str]:
    return {
        c["image"]
        for obj in objects
        for spec in pod_specs(obj)
        for c in spec.get("containers", []) + spec.get("initContainers", [])
    }


def start_platform(
    scenario: str, settings: dict, workdir: Path, network: Network, ray_extra: tuple[str, ...] = ()
) -> Platform:
    """`ray_extra`: packages added to the Ray image mirror (a user's own Ray image)."""
    cluster, objects, secrets = render(scenario, settings, workdir / "project")
    mirrors = images.for_images(images_used(objects), ray_extra)
    node = cluster.inventory.cluster_nodes[0]
    kubelet = Kubelet(objects, mirrors, workdir / "pods", network, node_name=node.name)
    return Platform(cluster, objects, secrets, kubelet, mirrors)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
