"""Contract tests: the rendered platform's containers run as their images run them, reached as the cluster
reaches them. Root only (network and mount namespaces); see README.md."""

from __future__ import annotations

import os

import pytest

from tests.contract.netns import Network


@pytest.fixture(scope="session")
def pod_network():
    if os.geteuid() != 0:
        pytest.fail("the contract tests need root: network and mount namespaces for the pods")
    network = Network()
    try:
        yield network
    finally:
        network.close()
