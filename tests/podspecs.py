"""Where rendered objects keep their pod templates (shared by the render policy tests and the contract tests)."""

from __future__ import annotations


def pod_specs(obj: dict):
    """Every pod template in an object: Deployments, the RayCluster's head and worker groups, the ScaledJob's Job."""
    if obj["kind"] == "Deployment":
        yield obj["spec"]["template"]["spec"]
    elif obj["kind"] == "RayCluster":
        yield obj["spec"]["headGroupSpec"]["template"]["spec"]
        for group in obj["spec"].get("workerGroupSpecs", []):
            yield group["template"]["spec"]
    elif obj["kind"] == "ScaledJob":
        yield obj["spec"]["jobTargetRef"]["template"]["spec"]
