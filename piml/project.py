"""A piml project on disk, and the one validated model of the cluster read from it.

PROJECT/
  inventory/hosts.yml   the Ansible inventory (k3s-ansible layout)
  piml.yaml             platform settings
  .piml/                keys, secrets, state (0700)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from piml.config import PimlConfig, load_config
from piml.errors import InputError, Problem
from piml.inventory import Inventory, load_inventory

INVENTORY = Path("inventory/hosts.yml")
CONFIG = Path("piml.yaml")
STATE_DIR = Path(".piml")
SSH_KEY = STATE_DIR / "id_ed25519"


@dataclass(frozen=True)
class ProjectPaths:
    root: Path
    inventory: Path

    @classmethod
    def resolve(cls, project: Path | None, inventory: Path | None) -> ProjectPaths:
        root = Path(project) if project else Path.cwd()
        if project and not root.is_dir():
            raise InputError(
                Problem(
                    "--project",
                    f"'{project}' is not a directory",
                    "name an existing project directory, or create one with `piml init DIR`",
                )
            )
        return cls(root, Path(inventory) if inventory else root / INVENTORY)

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    # Every file under .piml/ is named here, and only here.
    @property
    def state(self) -> Path:
        return self.root / STATE_DIR

    @property
    def kubeconfig(self) -> Path:
        """The cluster's kubeconfig, written by `piml up`'s kubeconfig stage (0600)."""
        return self.state / "kubeconfig"

    @property
    def known_hosts(self) -> Path:
        return self.state / "known_hosts"

    @property
    def secrets(self) -> Path:
        """The platform's passwords and tokens (0600; piml.secrets)."""
        from piml.secrets import SECRETS_FILE

        return self.state / SECRETS_FILE

    @property
    def k3s_token(self) -> Path:
        return self.state / "k3s-token"

    @property
    def wifi_passphrase(self) -> Path:
        return self.state / "wifi-passphrase"

    def show(self, path: Path) -> str:
        """`path` as the user will recognise it: relative to the working directory when under it."""
        try:
            return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
        except ValueError:
            return str(path)


@dataclass(frozen=True)
class Cluster:
    """What every stage works from: the nodes and the platform settings, validated once."""

    paths: ProjectPaths
    inventory: Inventory
    config: PimlConfig

    @property
    def name(self) -> str:
        return self.paths.root.resolve().name or "piml"


def load_cluster(paths: ProjectPaths) -> Cluster:
    """Read the inventory and piml.yaml, reporting the problems of both together."""
    problems: list[Problem] = []
    inventory = config = None
    if not paths.inventory.exists() and paths.inventory == paths.root / INVENTORY:
        raise InputError(
            Problem(
                paths.show(paths.inventory),
                "no inventory here",
                "run `piml init` to create a project, or pass -C PROJECT or -i INVENTORY",
            )
        )
    try:
        inventory = load_inventory(paths.inventory, paths.show(paths.inventory))
    except InputError as exc:
        problems += exc.problems
    try:
        config = load_config(paths.config, paths.show(paths.config))
    except InputError as exc:
        problems += exc.problems
    if problems:
        raise InputError(problems)
    return Cluster(paths, inventory, config)
