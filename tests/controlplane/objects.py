"""Objects the control plane's tests create."""

from __future__ import annotations


def deployment(name: str, pod_spec: dict, namespace: str | None = None) -> dict:
    """A one-replica Deployment of `pod_spec`, its pods labelled app=<name>."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, **({"namespace": namespace} if namespace else {})},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }
