"""Small value types that facts parse into (kept apart from NodeFacts so parsers can import them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# `vcgencmd get_throttled` bits 0-3 (now); the same flags at bits 16-19 mean "has occurred since boot".
THROTTLE_FLAGS = ("under_voltage", "arm_freq_capped", "throttled", "soft_temp_limit")
SINCE_BOOT_SHIFT = 16


@dataclass(frozen=True)
class Throttled:
    """The decoded `vcgencmd get_throttled` value."""

    raw: int  # e.g. 0x50005
    now: tuple[str, ...] = ()  # flags from THROTTLE_FLAGS active now
    since_boot: tuple[str, ...] = ()  # flags that have occurred since boot

    @classmethod
    def decode(cls, raw: int) -> Throttled:
        now = tuple(f for bit, f in enumerate(THROTTLE_FLAGS) if raw >> bit & 1)
        since = tuple(f for bit, f in enumerate(THROTTLE_FLAGS) if raw >> (bit + SINCE_BOOT_SHIFT) & 1)
        return cls(raw=raw, now=now, since_boot=since)

    @property
    def ok(self) -> bool:
        """Nothing known to the decoder happening now or since boot."""
        return not self.now and not self.since_boot

    def as_dict(self) -> dict[str, Any]:
        return {"raw": hex(self.raw), "now": list(self.now), "since_boot": list(self.since_boot)}


@dataclass(frozen=True)
class ServiceState:
    """A systemd unit as `systemctl show` reports it."""

    unit: str  # "k3s.service"
    loaded: bool | None = None  # False when systemd has no such unit (LoadState=not-found)
    active: str | None = None  # as `systemctl is-active`: active | inactive | failed | activating ...
    enabled: str | None = (
        None  # as `systemctl is-enabled`: enabled | disabled | static | masked ...; None: no unit file
    )
    sub: str | None = None  # SubState: running | dead | exited | auto-restart ...

    @property
    def running(self) -> bool:
        return self.active == "active"

    @property
    def is_active(self) -> bool:
        """What `systemctl is-active` exits 0 for."""
        return self.active in IS_ACTIVE

    @property
    def is_enabled(self) -> bool:
        """What `systemctl is-enabled` exits 0 for: the unit starts at boot, or is pulled in by one that does."""
        return self.enabled in IS_ENABLED

    @property
    def masked(self) -> bool:
        return self.enabled in ("masked", "masked-runtime")

    def as_dict(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "loaded": self.loaded,
            "active": self.active,
            "enabled": self.enabled,
            "sub": self.sub,
        }


# systemctl(1): the states `is-active` / `is-enabled` answer with exit status 0.
IS_ACTIVE = frozenset({"active", "reloading", "refreshing"})
IS_ENABLED = frozenset({"enabled", "enabled-runtime", "static", "alias", "indirect", "generated", "transient"})


@dataclass(frozen=True)
class RootMount:
    """What is mounted on `/`, and the block device behind it as sysfs resolves it."""

    source: str | None = None  # "/dev/nvme0n1p2", "/dev/root", "overlay"
    fstype: str | None = None  # "ext4", "overlay"
    sysfs: str | None = None  # "/sys/devices/.../block/mmcblk0/mmcblk0p2"; None for non-block roots
    disk: str | None = None  # whole disk behind the root partition: "mmcblk0", "nvme0n1", "sda"
    mmc_type: str | None = None  # "SD" or "MMC" for mmcblk disks
