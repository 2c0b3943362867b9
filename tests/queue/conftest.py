"""Fixtures of the queue tests. The real services (redis_server, mlflow_server, registered_model, dataset,
rabbitmq_server, runner_env) come from tests/services.py, shared with tests/health.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def broker(redis_server):
    """A clean Redis database and a broker on it (short leases, so dead runners are noticed quickly)."""
    from piml.queue import connect

    b = connect(redis_server.url, lease_seconds=2)
    b.r.flushdb()
    yield b
    b.close()
