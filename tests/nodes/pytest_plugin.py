"""pytest fixtures for tests that need real SSH test nodes (see tests/nodes/README.md).

Load with ``pytest_plugins = ["tests.nodes.pytest_plugin"]`` (or ``-p tests.nodes.pytest_plugin``).
Mark such tests ``@pytest.mark.nodes``.

If this machine cannot run nodes (not root, no systemd-nspawn, ...), the fixtures FAIL with the reason,
unless PIML_SKIP_NODE_TESTS=1 is set, in which case they skip.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest

from .substrate import Node, Substrate, SubstrateError, check_environment

INSTANCE = int(os.environ.get("PIML_TESTNODES_INSTANCE", "0"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "nodes: needs booted test nodes (root + systemd-nspawn; tests/nodes)")


class NodeFactory:
    """Boots test nodes on demand for the whole session; fault helpers are on `.substrate`.

    factory(3)                                  -> three fresh pi5 nodes named node1..node3
    factory(1, model="cm4")                     -> one CM4
    factory(2, hostname="raspberrypi")          -> two nodes both called raspberrypi (duplicate hostnames)
    """

    def __init__(self, substrate: Substrate):
        self.substrate = substrate
        self._trio: list[Node] | None = None

    def __call__(
        self, count: int = 1, model: str = "pi5", hostname: str | None = None, names: Sequence[str] | None = None
    ) -> list[Node]:
        return self.substrate.create(count, model=model, hostname=hostname, names=names)

    def destroy(self, nodes: Sequence[Node]) -> None:
        for n in nodes:
            self.substrate.destroy(n)

    def trio(self) -> list[Node]:
        """Three pi5 nodes, reused between tests unless a fault helper touched one (then made anew)."""
        sub = self.substrate
        if self._trio is not None:
            if any(n.name in sub.dirty or not sub.is_running(n) for n in self._trio):
                self.destroy(self._trio)
                self._trio = None
        if self._trio is None:
            self._trio = self(3)
        return list(self._trio)


def _fail_or_skip(reason: str) -> None:
    if os.environ.get("PIML_SKIP_NODE_TESTS") == "1":
        pytest.skip(f"node tests skipped (PIML_SKIP_NODE_TESTS=1): {reason}")
    pytest.fail(
        f"cannot run node tests on this machine: {reason}\n"
        f"Run as root after tests/nodes/install-deps.sh, or set PIML_SKIP_NODE_TESTS=1 to skip them.",
        pytrace=False,
    )


@pytest.fixture(scope="session")
def node_substrate():
    problems = check_environment()
    if problems:
        _fail_or_skip("; ".join(problems))
    sub = Substrate(instance=INSTANCE)
    try:
        sub.teardown()  # leftovers of a crashed earlier run of this instance
        sub.setup()
    except SubstrateError as e:
        sub.teardown()
        _fail_or_skip(str(e))
    try:
        yield sub
    finally:
        sub.teardown()


@pytest.fixture(scope="session")
def node_factory(node_substrate: Substrate) -> NodeFactory:
    return NodeFactory(node_substrate)


@pytest.fixture
def three_nodes(node_factory: NodeFactory) -> list[Node]:
    """Three running pi5 nodes (node1..3 style names) with working SSH; fresh if an earlier test
    applied a fault to one of them."""
    return node_factory.trio()
