"""Stateful services stay where their data is.

k3s's local-path volumes live in a directory on one node, and their PersistentVolume says so (a required
nodeAffinity on kubernetes.io/hostname); a pod using one can never run anywhere else
(rancher/local-path-provisioner#111). So before planning against a live cluster piml reads which node each
of the platform's claims is bound to, and the plan keeps the service there: it never moves one silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from piml.project import Cluster

# The PersistentVolumeClaim of each stateful service, as templates/mlflow.yaml.j2 and queue.yaml.j2 name them
# (tests/plan checks the rendered claims against this).
VOLUMES = {
    "mlflow": "mlflow-data",
    "postgres": "mlflow-postgres-data",
    "minio": "mlflow-minio-data",
    "redis": "redis-data",
    "rabbitmq": "rabbitmq-data",
}


@dataclass(frozen=True)
class Pin:
    component: str
    node: str
    claim: str  # the PersistentVolumeClaim whose volume is on `node`

    def as_dict(self) -> dict:
        return {"component": self.component, "node": self.node, "claim": self.claim}


def pins_from_claims(claim_nodes: dict[str, str]) -> dict[str, Pin]:
    """{claim: node} as read from the cluster -> {component: Pin} for the stateful services."""
    return {
        component: Pin(component, claim_nodes[claim], claim)
        for component, claim in VOLUMES.items()
        if claim in claim_nodes
    }


def read_pins(cluster: Cluster, kubeconfig: Path | None = None, request_timeout: float = 10.0) -> dict[str, Pin]:
    """Where the platform's existing volumes are, from the cluster in `kubeconfig` (default .piml/kubeconfig).

    No kubeconfig: no cluster yet, so nothing is pinned. The API not answering is a PimlError (exit 1)."""
    kubeconfig = kubeconfig or cluster.paths.kubeconfig
    if not kubeconfig.is_file():
        return {}
    from piml.kube.client import connect
    from piml.kube.volumes import claim_nodes

    kube = connect(kubeconfig, cluster.paths.show(kubeconfig), request_timeout)
    try:
        return pins_from_claims(claim_nodes(kube, cluster.config.namespace))
    finally:
        kube.close()
