"""Kubernetes quantities as integers: CPU in millicores, memory in MiB."""

from __future__ import annotations

import re


def cpu_m(text: str) -> int:
    """'500m' -> 500, '2' -> 2000, '0.5' -> 500."""
    return int(text[:-1]) if text.endswith("m") else round(float(text) * 1000)


def memory_mi(text: str) -> int:
    """'512Mi' -> 512, '2Gi' -> 2048, '1G' -> 954."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", text)
    if not match:
        raise ValueError(f"not a memory quantity: {text}")
    number, unit = float(match[1]), match[2] or ""
    factor = {
        "Ki": 1 / 1024,
        "Mi": 1,
        "Gi": 1024,
        "Ti": 1024**2,
        "k": 1000 / 1024**2,
        "M": 1000**2 / 1024**2,
        "G": 1000**3 / 1024**2,
        "T": 1000**4 / 1024**2,
        "": 1 / 1024**2,
    }[unit]
    return int(number * factor)


def fmt_cpu(millicores: int) -> str:
    return f"{millicores}m"


def fmt_memory(mebibytes: int) -> str:
    return f"{mebibytes // 1024}Gi" if mebibytes % 1024 == 0 else f"{mebibytes}Mi"
