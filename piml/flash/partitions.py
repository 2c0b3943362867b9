"""Where the partitions of an image are: MBR (what Raspberry Pi images use) and GPT, from the first bytes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

SECTOR = 512
# MBR types that hold FAT: FAT16 <32M, FAT16, FAT32 CHS, FAT32 LBA, FAT16 LBA, EFI system
FAT_MBR_TYPES = {0x04, 0x06, 0x0B, 0x0C, 0x0E, 0xEF}
GPT_FAT_TYPES = {
    uuid.UUID("ebd0a0a2-b9e5-4433-87c0-68b6b72699c7"),  # Microsoft basic data
    uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"),  # EFI system
}
# How much of an image's start holds everything `partitions()` reads (MBR, GPT header and entries).
HEADER_BYTES = 34 * SECTOR


@dataclass(frozen=True)
class Partition:
    index: int  # 1-based
    start: int  # bytes
    size: int  # bytes
    fat_type: bool  # the table says it holds a FAT file system

    @property
    def end(self) -> int:
        return self.start + self.size


def partitions(head: bytes) -> list[Partition]:
    """The partitions described by `head` (an image's first HEADER_BYTES or more); [] when none.

    Never raises on garbage: an unrecognised or inconsistent table gives [].
    """
    if len(head) < SECTOR or head[510:512] != b"\x55\xaa":
        return []
    found: list[Partition] = []
    for i in range(4):
        raw = head[446 + 16 * i : 446 + 16 * (i + 1)]
        ptype = raw[4]
        lba = int.from_bytes(raw[8:12], "little")
        count = int.from_bytes(raw[12:16], "little")
        if ptype == 0xEE:
            return _gpt(head)
        if ptype == 0 or count == 0 or lba == 0:
            continue
        if ptype in (0x05, 0x0F, 0x85):  # extended partitions: the boot partition is never in one
            continue
        found.append(Partition(i + 1, lba * SECTOR, count * SECTOR, ptype in FAT_MBR_TYPES))
    return found


def _gpt(head: bytes) -> list[Partition]:
    hdr = head[SECTOR : 2 * SECTOR]
    if len(hdr) < 92 or hdr[:8] != b"EFI PART":
        return []
    entries_lba = int.from_bytes(hdr[72:80], "little")
    count = int.from_bytes(hdr[80:84], "little")
    size = int.from_bytes(hdr[84:88], "little")
    if size < 128 or size > 4096 or count > 1024:
        return []
    found: list[Partition] = []
    for i in range(count):
        off = entries_lba * SECTOR + i * size
        raw = head[off : off + size]
        if len(raw) < 128:
            break
        type_guid = uuid.UUID(bytes_le=bytes(raw[0:16]))
        if type_guid.int == 0:
            continue
        first = int.from_bytes(raw[32:40], "little")
        last = int.from_bytes(raw[40:48], "little")
        if first == 0 or last < first:
            continue
        found.append(Partition(i + 1, first * SECTOR, (last - first + 1) * SECTOR, type_guid in GPT_FAT_TYPES))
    return found


def boot_partition(head: bytes) -> Partition | None:
    """The first partition the table marks as FAT: where Pi images keep config.txt and cmdline.txt."""
    return next((p for p in partitions(head) if p.fat_type), None)


def image_extent(head: bytes) -> int:
    """The end of the last partition in bytes (a lower bound for the image's size); 0 when unknown."""
    return max((p.end for p in partitions(head)), default=0)
