"""`piml status` with a cluster: the node part over SSH (unreachable here), the cluster part over the real API;
and `piml jobs`, whose tunnel to the broker starts with the real API too."""

import json

from piml.kube.deploy import deploy
from tests.platform.conftest import FAST, INVENTORY


def test_status_shows_cluster_components_and_urls(piml, project):
    cluster, rendered = project.render()
    deploy(cluster, project.kubeconfig, rendered, FAST)
    out = piml("status", "--json", cwd=project.root)
    assert out.returncode == 1  # the nodes cannot be reached over SSH
    data = json.loads(out.stdout)
    assert [n["reachable"] for n in data["nodes"]] == [False, False, False]
    assert data["cluster"]["reachable"] and data["cluster"]["healthy"]
    components = {c["component"] for c in data["cluster"]["components"]}
    assert {"mlflow", "ray", "redis", "dask-scheduler"} <= components
    table = piml("status", cwd=project.root).stdout
    assert "platform" in table and "mlflow" in table and "/mlflow/" in table
    assert all(secret not in out.stdout + table for secret in project.secrets.values())


def test_status_without_a_kubeconfig_has_no_cluster_part(piml, tmp_path):
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory/hosts.yml").write_text(INVENTORY)
    out = piml("status", "--json", cwd=tmp_path)
    assert json.loads(out.stdout)["cluster"] is None


def test_jobs_before_the_platform_is_up_names_the_secret_it_cannot_read(piml, project):
    out = piml("jobs", cwd=project.root)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "cluster (piml): cannot read the redis Secret: HTTP 404 Not Found; " in out.stderr, out.stderr
    assert "check the kubeconfig and that `piml up` finished" in out.stderr and "Traceback" not in out.stderr
