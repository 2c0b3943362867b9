"""`piml up --only platform` and `piml teardown` as a user runs them, against the real control plane."""

import json

from tests.platform.conftest import INVENTORY, api_gone


def test_up_platform_then_rerun_changes_nothing(piml, project):
    out = piml("up", "--only", "platform", "--json", cwd=project.root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    first = json.loads(out.stdout)["stages"]["platform"]
    assert first["created"] > 10 and first["ok"]
    again = json.loads(piml("up", "--only", "platform", "--json", cwd=project.root).stdout)["stages"]["platform"]
    assert (again["created"], again["changed"]) == (0, 0)
    table = piml("up", "--only", "platform", cwd=project.root)
    assert table.returncode == 0 and "0 created, 0 changed" in table.stdout
    assert "mlflow: http://127.0.0.1/mlflow/" in table.stdout
    secrets = project.secrets.values()
    assert not any(s in out.stdout + table.stdout + table.stderr for s in secrets)


def test_teardown_keeps_volumes_unless_purge_and_up_works_right_after(piml, project):
    assert piml("up", "--only", "platform", cwd=project.root).returncode == 0
    out = piml("teardown", cwd=project.root, input="")
    assert out.returncode == 2 and "--yes" in out.stderr  # no terminal to confirm on
    out = piml("teardown", "--yes", "--json", cwd=project.root)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)["teardown"]
    assert {k["kind"] for k in report["kept"]} <= {"PersistentVolumeClaim", "Namespace"}
    assert {"mlflow-data", "redis-data"} <= {k["name"] for k in report["kept"]}
    assert not report["still_deleting"]
    # Right after: up again converges, on the volumes it kept.
    out = piml("up", "--only", "platform", "--json", cwd=project.root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr
    assert "kept" in piml("teardown", "--yes", cwd=project.root).stdout  # the table form names what it kept
    out = piml("teardown", "--yes", "--purge", "--json", cwd=project.root)
    assert out.returncode == 0 and not json.loads(out.stdout)["teardown"]["kept"]
    # And right after a purge, too: the namespace was waited for until it was gone, not left Terminating.
    out = piml("up", "--only", "platform", "--json", cwd=project.root)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr


def test_platform_stage_needs_a_kubeconfig(piml, tmp_path):
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory/hosts.yml").write_text(INVENTORY)
    out = piml("up", "--only", "platform", cwd=tmp_path)
    assert out.returncode == 2 and "no kubeconfig yet" in out.stderr


def test_unreachable_api_is_a_reported_failure(piml, project):
    with api_gone(project):
        out = piml("up", "--only", "platform", "--json", cwd=project.root)
    assert out.returncode == 1
    data = json.loads(out.stdout)  # the summary is printed even so
    assert not data["ok"] and "platform" in data["failed"]
    assert "Traceback" not in out.stderr
