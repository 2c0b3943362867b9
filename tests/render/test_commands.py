"""`piml plan` and `piml render` as a user runs them."""

import json
import os
import stat
from pathlib import Path

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def test_plan_json(piml, tmp_path):
    out = piml("plan", "--json", "-i", str(SCENARIOS / "pi5-3x8gb.yml"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {s["component"] for s in data["services"]} >= {"mlflow", "ray-head", "redis", "keda", "dask-scheduler"}
    assert data["urls"]["mlflow"] == "http://10.0.0.1/mlflow/" and data["workload_share"] >= 0.6


def test_plan_that_cannot_fit_exits_2(piml, tmp_path):
    out = piml("plan", "-i", str(SCENARIOS / "cannot-fit.yml"), cwd=tmp_path)
    assert out.returncode == 2 and "does not fit" in out.stderr and "Traceback" not in out.stderr


def test_render_files_and_secrets(piml, tmp_path):
    inventory = str(SCENARIOS / "pi5-3x8gb.yml")
    out = piml("render", "-i", inventory, "--out", "plain", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    files = sorted(p.name for p in (tmp_path / "plain").iterdir())
    assert files == [
        "00-namespace.yaml",
        "01-mlflow.yaml",
        "02-dask.yaml",
        "03-ray.yaml",
        "04-queue.yaml",
        "05-runner.yaml",
        "06-ingress.yaml",
    ]
    assert not (tmp_path / ".piml/secrets.yaml").exists()  # nothing secret was needed or made
    out = piml("render", "-i", inventory, "--out", "secret", "--include-secrets", cwd=tmp_path)
    assert out.returncode == 0
    secrets_file = tmp_path / ".piml/secrets.yaml"
    assert stat.S_IMODE(os.stat(secrets_file).st_mode) == 0o600
    password = next(
        line.split(": ", 1)[1] for line in secrets_file.read_text().splitlines() if line.startswith("redis_password")
    )
    assert password in (tmp_path / "secret/04-queue.yaml").read_text()
    assert password not in (tmp_path / "plain/04-queue.yaml").read_text()
    assert all(stat.S_IMODE(os.stat(p).st_mode) == 0o600 for p in (tmp_path / "secret").iterdir())
    assert password not in out.stdout + out.stderr  # never printed


def test_render_to_stdout(piml, tmp_path):
    out = piml("render", "-i", str(SCENARIOS / "single-node.yml"), cwd=tmp_path)
    assert out.returncode == 0 and "kind: RayCluster" in out.stdout and "nodeSelector" in out.stdout
