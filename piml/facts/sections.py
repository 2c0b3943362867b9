"""Split the gather script's output into its sections (pure; never raises)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from piml.facts.commands import END, MARKER_PREFIX, MARKER_SUFFIX, NAMES

_MARKER = re.compile(rf"{re.escape(MARKER_PREFIX)}([A-Za-z0-9_]+){re.escape(MARKER_SUFFIX)}")


@dataclass(frozen=True)
class Sections:
    texts: dict[str, str]  # section name -> its text (trailing blank lines dropped); absent: not in output
    complete: bool  # the end marker was seen
    notes: tuple[str, ...] = ()


def clean(output: str) -> str:
    """Output as text lines: CRLF from a pty becomes LF, NUL bytes (device-tree strings) go."""
    return output.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def split_sections(output: str) -> Sections:
    """Sections of `output`. Only a line that is exactly a known marker starts a section; text before
    the first marker (a login banner) is ignored; a repeated section keeps its first copy."""
    texts: dict[str, list[str]] = {}
    notes: list[str] = []
    current: list[str] | None = None
    complete = False
    for line in clean(output).split("\n"):
        match = _MARKER.fullmatch(line.strip())
        if match is None:
            if current is not None:
                current.append(line)
            continue
        name = match.group(1)
        if name == END:
            complete = True
            break
        if name not in NAMES:
            notes.append(f"ignored unknown section {name!r}")
            current = None
        elif name in texts:
            notes.append(f"ignored a repeated {name!r} section")
            current = None
        else:
            current = texts[name] = []
    done = {}
    for name, lines in texts.items():
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        done[name] = "\n".join(lines)
    return Sections(texts=done, complete=complete, notes=tuple(notes))
