"""The k3s join token: the inventory's `token` when it gives one, else generated once and kept in
.piml/k3s-token (0600). Never printed or logged; handed to Ansible only in a 0600 vars file."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from piml.fsutil import make_private_dir, write_atomic

if TYPE_CHECKING:
    from piml.project import Cluster


def cluster_token(cluster: Cluster) -> tuple[str, str]:
    """(token, where it comes from: "inventory" | "generated" | ".piml/k3s-token")."""
    if cluster.inventory.k3s_vars.token:  # a literal: the inventory's check refuses a template or a number
        return cluster.inventory.k3s_vars.token.strip(), "inventory"
    path = cluster.paths.k3s_token
    if path.exists():
        text = path.read_text().strip()
        if text:
            return text, ".piml/k3s-token"
    token = secrets.token_hex(32)
    make_private_dir(cluster.paths.state)
    write_atomic(path, token + "\n", mode=0o600)
    return token, "generated"
