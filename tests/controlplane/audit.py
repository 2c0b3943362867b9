"""The control plane's audit log (cluster.py writes it for the admin user only): what piml asked, in order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Request:
    verb: str  # create, patch, update, delete, get, list, ...
    resource: str  # plural: deployments, rayclusters, ...
    namespace: str
    name: str
    code: int
    uri: str


def requests(plane_dir: Path) -> list[Request]:
    path = Path(json.loads((Path(plane_dir) / "controlplane.json").read_text())["audit_log"])
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        event = json.loads(line)
        if event.get("stage") != "ResponseComplete":
            continue
        ref = event.get("objectRef") or {}
        out.append(
            Request(
                event["verb"],
                ref.get("resource", ""),
                ref.get("namespace", ""),
                ref.get("name", ""),
                (event.get("responseStatus") or {}).get("code", 0),
                event.get("requestURI", ""),
            )
        )
    return out
