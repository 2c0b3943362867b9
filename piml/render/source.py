"""piml's own code, shipped to the cluster as source in a ConfigMap (no image build): the queue runner's
(piml/runner/ship.py) and the serving application's (piml/serve/apps.py)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # .../piml


@dataclass(frozen=True)
class SourceFile:
    key: str  # ConfigMap key: no '/' allowed
    path: str  # where it is mounted, below /app/piml
    text: str


def source_files(names: tuple[str, ...]) -> list[SourceFile]:
    """The package's files by path below piml/, as ConfigMap entries."""
    return [SourceFile("piml." + name.replace("/", "."), name, (PACKAGE / name).read_text()) for name in names]


def digest(files: list[SourceFile]) -> str:
    """A short hash of the files' paths and text: changes exactly when the shipped code does."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.path.encode() + b"\0" + f.text.encode() + b"\0")
    return h.hexdigest()[:16]
