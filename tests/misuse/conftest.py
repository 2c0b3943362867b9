"""Fixtures for the misuse tests."""

import pytest

from tests.misuse.rack import Rack


@pytest.fixture
def rack(tmp_path):
    """A project whose nodes are loopback tripwires (tests/misuse/rack.py)."""
    made = Rack(tmp_path)
    yield made
    made.close()
