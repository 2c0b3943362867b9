"""`piml up --only platform` and `piml teardown` as a user runs them, against the stand-in API."""

import json

from tests.platform.test_status_command import INVENTORY


def _project(project):
    (project.root / "inventory").mkdir(exist_ok=True)
    (project.root / "inventory/hosts.yml").write_text(INVENTORY)
    return project.root


def test_up_platform_then_rerun_changes_nothing(piml, project, kubeapi):
    root = _project(project)
    out = piml("up", "--only", "platform", "--json", cwd=root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    first = json.loads(out.stdout)["stages"]["platform"]
    assert first["created"] > 10 and first["ok"]
    again = json.loads(piml("up", "--only", "platform", "--json", cwd=root).stdout)["stages"]["platform"]
    assert (again["created"], again["changed"]) == (0, 0)
    table = piml("up", "--only", "platform", cwd=root)
    assert table.returncode == 0 and "0 created, 0 changed" in table.stdout and "mlflow: http://127.0.0.1/mlflow/" in table.stdout
    secrets = project.secrets.values()
    assert not any(s in out.stdout + table.stdout + table.stderr for s in secrets)


def test_teardown_keeps_volumes_unless_purge(piml, project, kubeapi):
    root = _project(project)
    assert piml("up", "--only", "platform", cwd=root).returncode == 0
    out = piml("teardown", cwd=root, input="")
    assert out.returncode == 2 and "--yes" in out.stderr  # no terminal to confirm on
    out = piml("teardown", "--yes", "--json", cwd=root)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)["teardown"]
    assert {k["kind"] for k in report["kept"]} <= {"PersistentVolumeClaim", "Namespace"}
    assert {"mlflow-data", "redis-data"} <= {k["name"] for k in report["kept"]}
    assert "kept" in piml("teardown", "--yes", cwd=root).stdout  # the table form names what it kept
    out = piml("teardown", "--yes", "--purge", "--json", cwd=root)
    assert out.returncode == 0 and not json.loads(out.stdout)["teardown"]["kept"]


def test_platform_stage_needs_a_kubeconfig(piml, tmp_path):
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory/hosts.yml").write_text(INVENTORY)
    out = piml("up", "--only", "platform", cwd=tmp_path)
    assert out.returncode == 2 and "no kubeconfig yet" in out.stderr


def test_unreachable_api_is_a_reported_failure(piml, project, kubeapi):
    root = _project(project)
    kubeapi.stop()  # the kubeconfig now points at a loopback port where nothing answers
    out = piml("up", "--only", "platform", "--json", cwd=root)
    assert out.returncode == 1
    data = json.loads(out.stdout)  # the summary is printed even so
    assert not data["ok"] and "platform" in data["failed"]
    assert "Traceback" not in out.stderr
