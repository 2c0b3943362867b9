"""Contract tests: the rendered platform's containers run as their images run them, reached as the cluster
reaches them. Root only (network and mount namespaces); see README.md."""

from __future__ import annotations

import os

import pytest

from tests.contract.images import NOTES
from tests.contract.netns import Network


def pytest_terminal_summary(terminalreporter):
    """Say, in every run's output, where what ran differs from the pinned images."""
    if NOTES:
        terminalreporter.section("contract tests: what stood in for the pinned images")
        for note in sorted(NOTES):
            terminalreporter.write_line(note)


@pytest.fixture(scope="session")
def pod_network():
    if os.geteuid() != 0:
        pytest.fail("the contract tests need root: network and mount namespaces for the pods")
    network = Network()
    try:
        yield network
    finally:
        network.close()
