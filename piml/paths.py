"""Where piml's own data (templates, playbooks) lives: in a checkout or inside an installed wheel."""

from __future__ import annotations

from functools import cache
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


@cache
def data_dir(name: str) -> Path:
    """The directory `name` ("templates" or "playbooks").

    An installed wheel carries them as piml/_data/<name> (see pyproject.toml); a checkout or an
    editable install has them at the top of the repository, next to the package.
    """
    for candidate in (_PACKAGE_DIR / "_data" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"piml's {name} directory is missing; reinstall piml")


def templates_dir() -> Path:
    return data_dir("templates")


def playbooks_dir() -> Path:
    return data_dir("playbooks")
