"""`piml init` misuse and resource sizes no cluster could run (issue 16): two project directories, keys ssh would
refuse or that are not keys, every earlier inventory kept by repeated --force; requests above limits, a Dask
worker or a queue Job bigger than any node. Each is one line, exit 2, nothing written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.misuse import one_error


def piml(cwd, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "piml", *args], cwd=cwd, capture_output=True, text=True, input="", timeout=120
    )


def test_init_with_two_different_directories_is_refused(tmp_path):
    one_error(piml(tmp_path, "init", "a", "-C", "b", "--node", "pi1=10.0.0.1"), "two project directories", "a", "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_init_with_the_same_directory_twice_is_fine(tmp_path):
    result = piml(tmp_path, "init", "a", "-C", "./a", "--node", "pi1=10.0.0.1")
    assert result.returncode == 0, result.stderr


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return path


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_others_may_read_is_refused_with_the_chmod(tmp_path, key, mode):
    os.chmod(key, mode)
    one_error(
        piml(tmp_path, "init", "p", "--node", "pi1=10.0.0.1", "--ssh-key", str(key)),
        "others may read",
        f"chmod 600 {key}",
    )
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/null", "/proc/self/mem", "/"])
def test_a_key_that_is_no_file_is_refused(tmp_path, special):
    one_error(piml(tmp_path, "init", "p", "--node", "pi1=10.0.0.1", "--ssh-key", special))
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "junk", [b"", b"junk\n", b"-----BEGIN OPENSSH PRIVATE KEY-----\nnope\n-----END OPENSSH PRIVATE KEY-----\n"]
)
def test_a_junk_project_key_is_not_silently_kept(tmp_path, junk):
    assert piml(tmp_path, "init", "p", "--node", "pi1=10.0.0.1").returncode == 0
    inventory = (tmp_path / "p/inventory/hosts.yml").read_bytes()
    key = tmp_path / "p/.piml/id_ed25519"
    key.write_bytes(junk)  # the .pub beside it is still good: it must not vouch for the private key
    line = one_error(
        piml(tmp_path, "init", "p", "--node", "pi2=10.0.0.2", "--force"),
        str(key.relative_to(tmp_path)),
        "not a private key",
    )
    assert "move it away" in line
    assert (tmp_path / "p/inventory/hosts.yml").read_bytes() == inventory and key.read_bytes() == junk


def test_every_force_keeps_the_inventory_it_replaces(tmp_path):
    contents = []
    for number in range(1, 5):
        if number > 1:
            contents.append((tmp_path / "p/inventory/hosts.yml").read_text())
        args = ["init", "p", "--node", f"pi1=10.0.0.{number}"] + (["--force"] if number > 1 else [])
        assert piml(tmp_path, *args).returncode == 0
    kept = [
        (tmp_path / "p/inventory" / name).read_text()
        for name in ("hosts.yml.bak", "hosts.yml.bak.2", "hosts.yml.bak.3")
    ]
    assert kept == contents  # the first inventory is still there after the third --force


@pytest.fixture
def project(tmp_path):
    assert (
        piml(
            tmp_path,
            "init",
            "p",
            "--node",
            "pi1=10.0.0.1",
            "--node",
            "pi2=10.0.0.2",
            "--model",
            "pi5",
            "--memory-gb",
            "8",
        ).returncode
        == 0
    )
    return tmp_path / "p"


@pytest.mark.parametrize(
    "settings, words",
    [
        (
            "mlflow:\n  resources: {requests: {cpu: '2'}, limits: {cpu: 500m}}\n",
            ("piml.yaml:", "mlflow.resources", "requests.cpu 2", "limits.cpu 500m"),
        ),
        ("dask:\n  worker: {requests: {memory: 3Gi}, limits: {memory: 1Gi}}\n", ("dask.worker", "requests.memory 3Gi")),
        ("dask:\n  worker: {requests: {memory: 900Ti}}\n", ("dask.worker", "do not fit")),
        ("mlflow:\n  resources: {requests: {memory: 900Ti}}\n", ("mlflow", "does not fit")),
        ("ray:\n  worker: {requests: {memory: 20Gi}}\n", ("ray.worker", "fits on no node")),
        ("queue:\n  resources: {requests: {cpu: '64'}}\n", ("queue.resources", "fits on no node")),
    ],
    ids=[
        "requests-above-limits",
        "worker-requests-above-limits",
        "900Ti-worker",
        "900Ti-mlflow",
        "ray-worker-too-big",
        "queue-job-too-big",
    ],
)
@pytest.mark.parametrize("command", ["plan", "render"])
def test_sizes_no_cluster_could_run_are_refused(project, settings, words, command):
    with open(project / "piml.yaml", "a") as handle:
        handle.write(settings)
    one_error(piml(project, command), *words)


def test_a_request_above_the_default_limit_raises_the_limit(project):
    """Only the request given: the limit piml would give is raised to it, as the plan shows."""
    with open(project / "piml.yaml", "a") as handle:
        handle.write("mlflow:\n  resources: {requests: {cpu: 1500m}}\n")
    result = piml(project, "plan", "--json")
    assert result.returncode == 0, result.stderr
    (mlflow,) = [s for s in json.loads(result.stdout)["services"] if s["component"] == "mlflow"]
    assert (mlflow["requests"]["cpu_m"], mlflow["limits"]["cpu_m"]) == (1500, 1500), mlflow
