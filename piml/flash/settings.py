"""A node's first-boot settings, from the one cluster model (inventory + piml.yaml) and the project key.

Wi-Fi passphrase, in this order: $PIML_WIFI_PASSPHRASE; the file .piml/wifi-passphrase (must be
mode 0600); a hidden prompt on a terminal. It is turned into the WPA PSK at once and never printed.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from piml.errors import InputError, Problem
from piml.flash.firstboot import NodeSetup, Wifi, static_address, wpa_psk
from piml.project import SSH_KEY, Cluster

PASSPHRASE_ENV = "PIML_WIFI_PASSPHRASE"
DEFAULT_USER = "pi"


def wants_4k_pages(cluster: Cluster, model: str | None) -> bool:
    """A Pi 5 boots 16 KB pages (kernel_2712.img). Only `nodes.pi5_4k_pages: true` asks for 4 KB pages (auto is
    false: the platform's images all run on 16 KB pages, docs/facts.md); firstboot.apply() then writes
    kernel=kernel8.img only if the image's boot partition has kernel8.img (Ubuntu's has not)."""
    return model == "pi5" and cluster.config.nodes.pi5_4k_pages is True


def project_public_key(cluster: Cluster) -> str:
    """The public key the nodes will trust: the inventory's key file's .pub, else .piml/id_ed25519.pub."""
    root = cluster.paths.root
    candidates = []
    key_files = {n.key_file for n in cluster.inventory.nodes if n.key_file}
    for key in key_files:
        candidates.append(Path(str(key) + ".pub"))
    candidates.append(root / (str(SSH_KEY) + ".pub"))
    for pub in candidates:
        try:
            line = pub.read_text().strip()
        except OSError:
            continue
        if line.startswith(("ssh-", "ecdsa-", "sk-")):
            return line
    raise InputError(
        Problem(
            str(candidates[-1]),
            "no SSH public key for the nodes",
            "run `piml init` to make one, or put the .pub next to ansible_ssh_private_key_file",
        )
    )


def read_passphrase(cluster: Cluster, ssid: str, ask: Callable[[str], str] | None) -> str:
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    path = cluster.paths.wifi_passphrase
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise InputError(Problem(str(path), f"is readable by others (mode {mode:o})", f"run `chmod 600 {path}`"))
        return path.read_text().rstrip("\r\n")
    if ask is not None and sys.stdin.isatty():
        return ask(f"Wi-Fi passphrase for '{ssid}'")
    raise InputError(
        Problem(
            "piml.yaml flash.wifi_ssid",
            f"no passphrase for Wi-Fi '{ssid}'",
            f"set ${PASSPHRASE_ENV}, or write it to {cluster.paths.show(path)} (chmod 600), or run in a terminal to be asked",
        )
    )


class SetupFactory:
    """Builds NodeSetup per node; asks for the Wi-Fi passphrase at most once."""

    def __init__(self, cluster: Cluster, ask: Callable[[str], str] | None = None):
        self.cluster = cluster
        self.ask = ask
        self._wifi: Wifi | None = None
        self._key: str | None = None

    def wifi(self) -> Wifi | None:
        flash = self.cluster.config.flash
        if not flash.wifi_ssid:
            return None
        if not flash.wifi_country:
            raise InputError(
                Problem(
                    "piml.yaml flash.wifi_country",
                    "Wi-Fi needs a regulatory country",
                    "set flash.wifi_country, e.g. DE or GB",
                )
            )
        if self._wifi is None:
            passphrase = read_passphrase(self.cluster, flash.wifi_ssid, self.ask)
            try:
                psk = wpa_psk(flash.wifi_ssid, passphrase)
            except ValueError as exc:
                raise InputError(
                    Problem("Wi-Fi passphrase", str(exc), "check the passphrase (it is not shown)")
                ) from None
            self._wifi = Wifi(flash.wifi_country, flash.wifi_ssid, psk)
        return self._wifi

    def names(self) -> list[str]:
        return [n.name for n in self.cluster.inventory.nodes]

    def for_node(self, name: str) -> NodeSetup:
        from piml.inventory.validate import is_ip

        inventory = self.cluster.inventory
        node = inventory.node(name)
        if node is None:
            from piml.inventory.ansible import did_you_mean

            raise InputError(
                Problem(
                    f"--node {name}",
                    f"no node '{name}' in {inventory.source}",
                    did_you_mean(name, [n.name for n in inventory.nodes]),
                )
            )
        if is_ip(node.name):
            raise InputError(
                Problem(
                    f"--node {name}",
                    "the node's name is an IP address, which cannot be a host name",
                    "name the host in the inventory and set ansible_host to the address",
                )
            )
        flash = self.cluster.config.flash
        static = None
        if flash.network == "static" or (flash.network == "auto" and flash.gateway):
            if not is_ip(node.address) or not flash.gateway:
                if flash.network == "static":
                    what = (
                        "has no gateway in piml.yaml flash.gateway"
                        if not flash.gateway
                        else f"has address '{node.address}', not an IP"
                    )
                    raise InputError(
                        Problem(
                            f"--node {name}",
                            f"flash.network is static but the node {what}",
                            "set ansible_host to an IP address and flash.gateway, or use flash.network: dhcp",
                        )
                    )
            else:
                try:
                    static = static_address(
                        node.address, flash.prefix_length, flash.gateway, tuple(flash.dns), flash.interface
                    )
                except ValueError as exc:
                    raise InputError(
                        Problem(
                            "piml.yaml flash",
                            f"bad static address settings: {exc}",
                            "check flash.gateway, flash.dns and flash.prefix_length",
                        )
                    ) from None
        if self._key is None:
            self._key = project_public_key(self.cluster)
        return NodeSetup(
            hostname=node.name.split(".")[0],
            user=node.user or DEFAULT_USER,
            ssh_key=self._key,
            timezone=flash.timezone,
            wifi=self.wifi(),
            static=static,
            cgroup=flash.cgroup_flags,
            pi5_4k_pages=wants_4k_pages(self.cluster, node.model),
        )
