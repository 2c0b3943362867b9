"""The scheduled backup's row in `piml check` and `piml status`. The CronJob's status fields are the ones the real
cronjob controller writes (tests/controlplane/test_live_objects.py reads a failed run from it); here, what each
state turns into."""

from __future__ import annotations

from piml.health.cluster import _workload_result
from piml.health.result import WARN
from piml.kube.status import workload_rows


def cronjob(status: dict | None, suspend: bool = False) -> dict:
    return {
        "kind": "CronJob",
        "metadata": {
            "name": "mlflow-backup",
            "namespace": "piml",
            "labels": {"app.kubernetes.io/name": "mlflow-backup"},
        },
        "spec": {"schedule": "30 3 * * *", "suspend": suspend},
        "status": status,
    }


def test_a_failed_last_run_is_a_warning_with_the_logs_to_read():
    status = {"lastScheduleTime": "2026-12-03T03:30:00Z", "lastSuccessfulTime": "2026-12-02T03:31:12Z"}
    (row,) = workload_rows(cronjob(status))
    assert row["component"] == "mlflow-backup" and not row["ready"]
    assert row["state"] == "the run of 2026-12-03T03:30:00Z failed; last success 2026-12-02T03:31:12Z"
    result = _workload_result(row, "piml")
    assert result.status == WARN
    assert result.fix == "kubectl -n piml logs -l app.kubernetes.io/name=mlflow-backup --tail 20"


def test_the_other_states_are_fine():
    states = {
        "last success 2026-12-03T03:31:12Z (30 3 * * *)": {
            "lastScheduleTime": "2026-12-03T03:30:00Z", "lastSuccessfulTime": "2026-12-03T03:31:12Z"},
        "running since 2026-12-03T03:30:00Z": {"lastScheduleTime": "2026-12-03T03:30:00Z", "active": [{"name": "j"}]},
        "not run yet (30 3 * * *)": None,
    }  # fmt: skip
    for state, status in states.items():
        (row,) = workload_rows(cronjob(status))
        assert (row["ready"], row["state"]) == (True, state)
        assert not _workload_result(row, "piml").failed
    (row,) = workload_rows(cronjob(None, suspend=True))
    assert row["state"] == "suspended (30 3 * * *)"
