"""What `piml upgrade --k3s` may do, worked out before it touches a node: the versions, Kubernetes' skew policy,
and the order (servers one at a time, then agents in batches). Pure: the cluster is read by the command.

Upstream (docs/day2-design.md, section 1): "upgrade server nodes first one at a time, then any agent nodes"
(docs.k3s.io/upgrades/manual); kube-apiserver must not skip minor versions, even on one server, and nothing
downgrades (the version skew policy, kubernetes.io/releases/version-skew-policy).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from piml.errors import InputError, Problem

K3S_VERSION_RE = re.compile(r"^v(\d{1,4})\.(\d{1,4})\.(\d{1,4})\+k3s(\d{1,4})$")


def parse_version(text: str) -> tuple[int, int, int, int] | None:
    """`v1.36.3+k3s1` -> (1, 36, 3, 1); None for anything else (a k3s release is always written so)."""
    found = K3S_VERSION_RE.match(text.strip()) if isinstance(text, str) else None
    return tuple(int(g) for g in found.groups()) if found else None  # type: ignore[return-value]


def target_version(text: str, where: str = "--k3s") -> tuple[int, int, int, int]:
    version = parse_version(text)
    if version is None:
        raise InputError(
            Problem(where, f"'{text}' is not a k3s release", "give one as k3s names them, e.g. v1.36.3+k3s1")
        )
    return version


@dataclass
class UpgradePlan:
    target: str
    batches: list[list[str]] = field(default_factory=list)  # in order: each server alone, then agent batches
    already: list[str] = field(default_factory=list)  # at the target already (re-run: only uncordoned)
    running: dict[str, str] = field(default_factory=dict)  # node -> the version it runs now

    @property
    def nodes_to_upgrade(self) -> list[str]:
        return [name for batch in self.batches for name in batch]


def plan_upgrade(
    target: str, servers: list[str], agents: list[str], running: dict[str, str], max_unavailable: int
) -> UpgradePlan:
    """The order of an upgrade to `target`, or InputError when the skew policy forbids it (naming the node and
    the path to take). `running`: each node's kubelet version as the API reports it."""
    wanted = target_version(target)
    plan = UpgradePlan(target, running=dict(running))
    for name in servers + agents:
        have = parse_version(running.get(name, ""))
        if have is None:
            raise InputError(
                Problem(
                    name,
                    f"reports k3s version '{running.get(name, '')}', which piml cannot read",
                    "check the node with `kubectl get node -o wide`",
                )
            )
        if have[0] != wanted[0]:
            raise InputError(Problem(name, f"runs {running[name]}: {target} is another major version", ""))
        if have > wanted:
            raise InputError(
                Problem(
                    name,
                    f"runs {running[name]}, newer than {target}: k3s does not downgrade in place",
                    "restore a datastore backup taken before the upgrade (https://docs.k3s.io/upgrades/roll-back)",
                )
            )
        if wanted[1] - have[1] > 1:
            step = f"v{have[0]}.{have[1] + 1}"
            raise InputError(
                Problem(
                    name,
                    f"runs {running[name]}: {target} skips minor versions, which Kubernetes' skew policy forbids",
                    f"upgrade one minor at a time: first the newest {step}.x release "
                    f"(piml upgrade --k3s {step}.N+k3sM), then {target}",
                )
            )
    for name in servers:
        if running[name] == target:
            plan.already.append(name)
        else:
            plan.batches.append([name])
    pending: list[str] = []
    for name in agents:
        (plan.already if running[name] == target else pending).append(name)
    size = max(1, max_unavailable)
    plan.batches += [pending[i : i + size] for i in range(0, len(pending), size)]
    return plan
