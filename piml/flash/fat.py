"""A small FAT16/FAT32 editor for the boot partition, working on bytes in memory: no mounting, no root.

It does exactly what first-boot customisation needs: list, read and (re)write files in the root
directory, with long file names, both FAT copies and the FAT32 FSInfo free count kept right, so that
`fsck.fat -n` finds nothing to fix.

Why our own and not a PyPI library: the one maintained pure-Python FAT library (pyfatfs) sits on
PyFilesystem2, which is unmaintained and imports `pkg_resources`; we need a tenth of it, on a buffer
that is still part of an image stream. Pure Python, so `--output` works on a Mac too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


class FatError(ValueError):
    """The bytes are not a FAT file system we can edit (or it is full)."""


DIR_ENTRY = 32
ATTR_LFN = 0x0F
ATTR_DIR = 0x10
ATTR_VOLUME = 0x08
ATTR_ARCHIVE = 0x20
SHORT_CHARS = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'()-@^_`{}~")


@dataclass
class Entry:
    name: str  # long name when there is one, else the short name as Linux shows it
    short: bytes  # 11 bytes
    attr: int
    cluster: int
    size: int
    offset: int  # byte offset of the short entry in the partition
    lfn_offsets: tuple[int, ...]  # byte offsets of its long-name entries

    @property
    def is_dir(self) -> bool:
        return bool(self.attr & ATTR_DIR)


def looks_like_fat(boot_sector: bytes) -> bool:
    """A quick check on a partition's first sector."""
    if len(boot_sector) < 512 or boot_sector[510:512] != b"\x55\xaa":
        return False
    bps = int.from_bytes(boot_sector[11:13], "little")
    spc = boot_sector[13]
    return bps in (512, 1024, 2048, 4096) and spc in (1, 2, 4, 8, 16, 32, 64, 128) and boot_sector[16] in (1, 2)


def _short_display(short: bytes, case: int) -> str:
    base = short[:8].rstrip(b" ")
    ext = short[8:].rstrip(b" ")
    if base[:1] == b"\x05":
        base = b"\xe5" + base[1:]
    b = base.decode("cp437")
    e = ext.decode("cp437")
    if case & 0x08:
        b = b.lower()
    if case & 0x10:
        e = e.lower()
    return f"{b}.{e}" if e else b


def lfn_checksum(short: bytes) -> int:
    total = 0
    for c in short:
        total = (((total & 1) << 7) + (total >> 1) + c) & 0xFF
    return total


def _dos_time(now: float | None = None) -> tuple[int, int]:
    t = time.localtime(now if now is not None else time.time())
    year = min(max(t.tm_year, 1980), 2107)
    date = ((year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday
    clock = (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2)
    return date, clock


class FatVolume:
    """A FAT16/FAT32 file system held in `buf` (a bytearray or writable memoryview of the partition)."""

    def __init__(self, buf):
        self.buf = memoryview(buf)
        if self.buf.readonly:
            raise FatError("the FAT buffer is read-only")
        b = self.buf
        if len(b) < 512 or not looks_like_fat(bytes(b[:512])):
            raise FatError("no FAT boot sector")
        self.bps = int.from_bytes(b[11:13], "little")
        self.spc = b[13]
        self.reserved = int.from_bytes(b[14:16], "little")
        self.nfats = b[16]
        self.root_entries = int.from_bytes(b[17:19], "little")
        total = int.from_bytes(b[19:21], "little") or int.from_bytes(b[32:36], "little")
        fatsz = int.from_bytes(b[22:24], "little") or int.from_bytes(b[36:40], "little")
        if not (self.reserved and fatsz and total):
            raise FatError("the FAT boot sector has zero sizes")
        self.fat_size = fatsz * self.bps
        self.cluster_size = self.spc * self.bps
        self.fat_offset = self.reserved * self.bps
        root_dir_bytes = self.root_entries * DIR_ENTRY
        root_dir_sectors = (root_dir_bytes + self.bps - 1) // self.bps
        self.root_offset = self.fat_offset + self.nfats * self.fat_size
        self.data_offset = self.root_offset + root_dir_sectors * self.bps
        data_sectors = total - (self.reserved + self.nfats * fatsz + root_dir_sectors)
        if data_sectors <= 0:
            raise FatError("the FAT boot sector describes no data area")
        self.clusters = data_sectors // self.spc
        if self.clusters < 4085:
            raise FatError("FAT12 is not supported (the boot partition is FAT16 or FAT32 on every Pi image)")
        self.fat32 = self.clusters >= 65525
        if self.fat32:
            self.root_cluster = int.from_bytes(b[44:48], "little")
            self.fsinfo_sector = int.from_bytes(b[48:50], "little")
        else:
            self.root_cluster = 0
            self.fsinfo_sector = 0
        end = self.data_offset + self.clusters * self.cluster_size
        if end > len(b) or self.fat_offset + self.nfats * self.fat_size > len(b):
            raise FatError(f"the file system needs {end} bytes but the partition has {len(b)}")
        self.max_cluster = self.clusters + 1  # clusters are numbered 2..clusters+1

    # --- the allocation table -------------------------------------------------------------
    def _fat_get(self, n: int) -> int:
        if self.fat32:
            o = self.fat_offset + n * 4
            return int.from_bytes(self.buf[o : o + 4], "little") & 0x0FFFFFFF
        o = self.fat_offset + n * 2
        return int.from_bytes(self.buf[o : o + 2], "little")

    def _fat_set(self, n: int, value: int) -> None:
        for copy in range(self.nfats):
            base = self.fat_offset + copy * self.fat_size
            if self.fat32:
                o = base + n * 4
                old = int.from_bytes(self.buf[o : o + 4], "little")
                self.buf[o : o + 4] = ((old & 0xF0000000) | (value & 0x0FFFFFFF)).to_bytes(4, "little")
            else:
                o = base + n * 2
                self.buf[o : o + 2] = (value & 0xFFFF).to_bytes(2, "little")

    @property
    def _eoc(self) -> int:
        return 0x0FFFFFFF if self.fat32 else 0xFFFF

    def _is_end(self, value: int) -> bool:
        return value >= (0x0FFFFFF8 if self.fat32 else 0xFFF8)

    def chain(self, first: int) -> list[int]:
        clusters: list[int] = []
        if first == 0:
            return clusters
        n = first
        while not self._is_end(n):
            if not 2 <= n <= self.max_cluster:
                raise FatError(f"a cluster chain points outside the file system ({n})")
            if len(clusters) > self.clusters:
                raise FatError("a cluster chain loops")
            clusters.append(n)
            n = self._fat_get(n)
        return clusters

    def _free_list(self) -> list[int]:
        if self.fat32:
            start = self.fat_offset
            table = self.buf[start : start + (self.max_cluster + 1) * 4].cast("I").tolist()
            return [i for i in range(2, self.max_cluster + 1) if table[i] & 0x0FFFFFFF == 0]
        table = self.buf[self.fat_offset : self.fat_offset + (self.max_cluster + 1) * 2].cast("H").tolist()
        return [i for i in range(2, self.max_cluster + 1) if table[i] == 0]

    def _allocate(self, count: int) -> list[int]:
        free = self._free_list()
        if len(free) < count:
            raise FatError(f"the boot partition is full (needs {count} clusters, {len(free)} free)")
        chosen = free[:count]
        for a, b in zip(chosen, chosen[1:], strict=False):  # pairs: the last has no successor
            self._fat_set(a, b)
        if chosen:
            self._fat_set(chosen[-1], self._eoc)
        return chosen

    def _free_chain(self, first: int) -> None:
        for n in self.chain(first):
            self._fat_set(n, 0)

    def _update_fsinfo(self) -> None:
        if not self.fat32 or not self.fsinfo_sector:
            return
        o = self.fsinfo_sector * self.bps
        sec = self.buf[o : o + 512]
        if bytes(sec[0:4]) != b"RRaA" or bytes(sec[484:488]) != b"rrAa":
            return
        free = self._free_list()
        sec[488:492] = len(free).to_bytes(4, "little")
        sec[492:496] = (free[0] if free else 0xFFFFFFFF).to_bytes(4, "little")

    def _cluster_offset(self, n: int) -> int:
        return self.data_offset + (n - 2) * self.cluster_size

    # --- the root directory ---------------------------------------------------------------
    def _root_slots(self) -> list[int]:
        """Byte offsets of every 32-byte slot of the root directory, in order."""
        if not self.fat32:
            return [self.root_offset + i * DIR_ENTRY for i in range(self.root_entries)]
        slots = []
        for n in self.chain(self.root_cluster):
            base = self._cluster_offset(n)
            slots += [base + i for i in range(0, self.cluster_size, DIR_ENTRY)]
        return slots

    def entries(self) -> list[Entry]:
        result: list[Entry] = []
        lfn_parts: dict[int, bytes] = {}
        lfn_offsets: list[int] = []
        lfn_sum = None
        for off in self._root_slots():
            raw = self.buf[off : off + DIR_ENTRY]
            first = raw[0]
            if first == 0x00:
                break
            if first == 0xE5:
                lfn_parts, lfn_offsets, lfn_sum = {}, [], None
                continue
            attr = raw[11]
            if attr == ATTR_LFN:
                seq = first & 0x1F
                chars = bytes(raw[1:11]) + bytes(raw[14:26]) + bytes(raw[28:32])
                if first & 0x40:
                    lfn_parts, lfn_offsets = {}, []
                    lfn_sum = raw[13]
                lfn_parts[seq] = chars
                lfn_offsets.append(off)
                continue
            short = bytes(raw[0:11])
            if attr & ATTR_VOLUME:
                lfn_parts, lfn_offsets, lfn_sum = {}, [], None
                continue
            name = _short_display(short, raw[12])
            if lfn_parts and lfn_sum == lfn_checksum(short):
                units = b"".join(lfn_parts[k] for k in sorted(lfn_parts))
                units = b"".join(
                    units[i : i + 2] for i in range(0, len(units), 2) if units[i : i + 2] not in (b"\xff\xff",)
                )
                end = next((i for i in range(0, len(units), 2) if units[i : i + 2] == b"\x00\x00"), len(units))
                name = units[:end].decode("utf-16-le", errors="replace")
            cluster = int.from_bytes(raw[26:28], "little")
            if self.fat32:
                cluster |= int.from_bytes(raw[20:22], "little") << 16
            size = int.from_bytes(raw[28:32], "little")
            result.append(Entry(name, short, attr, cluster, size, off, tuple(lfn_offsets) if lfn_parts else ()))
            lfn_parts, lfn_offsets, lfn_sum = {}, [], None
        return result

    def find(self, name: str) -> Entry | None:
        want = name.lower()
        return next((e for e in self.entries() if e.name.lower() == want), None)

    def names(self) -> list[str]:
        return [e.name for e in self.entries() if not e.is_dir]

    def read(self, name: str) -> bytes | None:
        entry = self.find(name)
        if entry is None or entry.is_dir:
            return None
        data = bytearray()
        for n in self.chain(entry.cluster):
            o = self._cluster_offset(n)
            data += self.buf[o : o + self.cluster_size]
            if len(data) >= entry.size:
                break
        if len(data) < entry.size:
            raise FatError(f"'{name}' is shorter on disk than its directory entry says")
        return bytes(data[: entry.size])

    def _write_data(self, data: bytes) -> int:
        """Store `data` in fresh clusters; return the first cluster (0 for an empty file)."""
        if not data:
            return 0
        count = (len(data) + self.cluster_size - 1) // self.cluster_size
        clusters = self._allocate(count)
        for i, n in enumerate(clusters):
            piece = data[i * self.cluster_size : (i + 1) * self.cluster_size]
            o = self._cluster_offset(n)
            self.buf[o : o + self.cluster_size] = piece.ljust(self.cluster_size, b"\x00")
        return clusters[0]

    def write(self, name: str, data: bytes, now: float | None = None) -> None:
        """Create or replace the file `name` in the root directory."""
        data = bytes(data)
        existing = self.find(name)
        if existing is not None and existing.is_dir:
            raise FatError(f"'{name}' is a directory")
        if existing is not None:
            if existing.cluster:
                self._free_chain(existing.cluster)
            first = self._write_data(data)
            self._set_entry(existing.offset, existing.short, existing.attr, first, len(data), now, keep_case=True)
        else:
            short, case, needs_lfn = self._short_name(name)
            lfn = _lfn_entries(name, short) if needs_lfn else []
            offsets = self._free_slots(len(lfn) + 1)
            first = self._write_data(data)
            for off, raw in zip(offsets[:-1], lfn, strict=True):  # the last slot is the short entry's
                self.buf[off : off + DIR_ENTRY] = raw
            end = offsets[-1]
            self.buf[end : end + DIR_ENTRY] = bytes(DIR_ENTRY)
            self.buf[end + 12] = case
            self._set_entry(end, short, ATTR_ARCHIVE, first, len(data), now, created=True)
        self._update_fsinfo()

    def _set_entry(
        self, off: int, short: bytes, attr: int, cluster: int, size: int, now, keep_case=False, created=False
    ) -> None:
        e = self.buf[off : off + DIR_ENTRY]
        e[0:11] = short
        e[11] = attr
        date, clock = _dos_time(now)
        if created:
            e[14:16] = clock.to_bytes(2, "little")
            e[16:18] = date.to_bytes(2, "little")
        e[18:20] = date.to_bytes(2, "little")  # last access date
        e[22:24] = clock.to_bytes(2, "little")
        e[24:26] = date.to_bytes(2, "little")
        e[26:28] = (cluster & 0xFFFF).to_bytes(2, "little")
        e[20:22] = ((cluster >> 16) & 0xFFFF if self.fat32 else 0).to_bytes(2, "little")
        e[28:32] = size.to_bytes(4, "little")

    def _short_name(self, name: str) -> tuple[bytes, int, bool]:
        """(11-byte short name, NT case flags, whether a long name is needed)."""
        base, dot, ext = name.rpartition(".")
        if not dot:
            base, ext = name, ""
        fits = (
            0 < len(base) <= 8
            and len(ext) <= 3
            and name.isascii()
            and all(ord(c.upper()) in SHORT_CHARS for c in base + ext)
            and (base.islower() or base.isupper() or not any(c.isalpha() for c in base))
            and (not ext or ext.islower() or ext.isupper() or not any(c.isalpha() for c in ext))
        )
        if fits:
            short = base.upper().ljust(8).encode() + ext.upper().ljust(3).encode()
            case = (0x08 if base.islower() else 0) | (0x10 if ext.islower() else 0)
            if not any(e.short == short for e in self.entries()):
                return short, case, False
        clean = lambda s: "".join(c for c in s.upper() if c.isascii() and ord(c) in SHORT_CHARS)  # noqa: E731
        b, x = clean(base) or "FILE", clean(ext)[:3]
        taken = {e.short for e in self.entries()}
        for i in range(1, 1000000):
            tail = f"~{i}"
            short = (b[: 8 - len(tail)] + tail).ljust(8).encode() + x.ljust(3).encode()
            if short not in taken:
                return short, 0, True
        raise FatError("no free short name")

    def _free_slots(self, count: int) -> list[int]:
        """`count` consecutive free directory slots, growing a FAT32 root directory when needed."""
        slots = self._root_slots()
        run: list[int] = []
        for off in slots:
            first = self.buf[off]
            if first in (0x00, 0xE5):
                run.append(off)
                if len(run) == count:
                    return run
            else:
                run = []
        if not self.fat32:
            raise FatError("the root directory is full")
        chain = self.chain(self.root_cluster)
        need = (count - len(run)) * DIR_ENTRY
        extra = self._allocate((need + self.cluster_size - 1) // self.cluster_size)
        self._fat_set(chain[-1], extra[0])
        for n in extra:
            o = self._cluster_offset(n)
            self.buf[o : o + self.cluster_size] = bytes(self.cluster_size)
            run += [o + i for i in range(0, self.cluster_size, DIR_ENTRY)]
        return run[:count]


def _lfn_entries(name: str, short: bytes) -> list[bytes]:
    """The long-name entries for `name`, in on-disk order (last part first)."""
    units = name.encode("utf-16-le")
    chars = [units[i : i + 2] for i in range(0, len(units), 2)]
    if len(chars) > 255:
        raise FatError(f"file name too long: {name}")
    parts = [chars[i : i + 13] for i in range(0, len(chars), 13)]
    if len(chars) % 13:
        parts[-1] = parts[-1] + [b"\x00\x00"] + [b"\xff\xff"] * (12 - len(parts[-1]))
    checksum = lfn_checksum(short)
    out = []
    for index, part in enumerate(parts, start=1):
        raw = bytearray(DIR_ENTRY)
        raw[0] = index | (0x40 if index == len(parts) else 0)
        raw[1:11] = b"".join(part[0:5])
        raw[11] = ATTR_LFN
        raw[13] = checksum
        raw[14:26] = b"".join(part[5:11])
        raw[28:32] = b"".join(part[11:13])
        out.append(bytes(raw))
    return list(reversed(out))
