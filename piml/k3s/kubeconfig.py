"""The cluster's admin kubeconfig: rewrite k3s's (server 127.0.0.1, names "default") for this project,
store it in .piml/kubeconfig (0600) and merge it into ~/.kube/config (or $KUBECONFIG).

The merge touches only the cluster, context and user entries named after the project: the text of every
other entry stays byte-for-byte as it was (the file is edited as text, guided by YAML's node positions).
When the file's layout is too unusual for that (flow style, say), the merged data is written out whole
instead: other entries keep their content, not their formatting. A backup is kept next to the file.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml

from piml.errors import EXIT_FAILED, InputError, PimlError, Problem
from piml.fsutil import write_atomic

SECTIONS = (("clusters", "cluster"), ("contexts", "context"), ("users", "user"))


def default_target() -> Path:
    env = os.environ.get("KUBECONFIG", "")
    first = next((p for p in env.split(os.pathsep) if p), None)
    return Path(first).expanduser() if first else Path.home() / ".kube" / "config"


def check_target(path: Path) -> None:
    """Refuse (exit 2), before anything changes, a kubeconfig file piml could not edit later: a directory, a FIFO
    or device (reading one blocks or means nothing), unreadable, not YAML, not a mapping, or in a directory it
    cannot write to. A file that does not exist yet is fine: there is nothing to remove, and a merge creates it."""
    from_env = bool(os.environ.get("KUBECONFIG", "").strip(os.pathsep))
    where = f"KUBECONFIG={path}" if from_env else str(path)
    fix = (
        "point KUBECONFIG at a kubeconfig file, or unset it to use ~/.kube/config; nothing was changed"
        if from_env
        else "fix or move it; nothing was changed"
    )

    def refuse(what: str) -> InputError:
        return InputError(Problem(where, what, fix))

    try:
        info = path.stat()
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise refuse("a parent of it is a file, not a directory") from None
    except OSError as exc:
        raise refuse(f"cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise refuse("is a directory, not a kubeconfig file")
    if not stat.S_ISREG(info.st_mode):
        raise refuse("is not a regular file (a FIFO, socket or device), not a kubeconfig file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise refuse(f"cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        parsed = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise refuse(f"is not valid YAML ({' '.join(str(getattr(exc, 'problem', None) or exc).split())})") from None
    if parsed is not None and not isinstance(parsed, dict):
        raise refuse(f"is not a kubeconfig (YAML {type(parsed).__name__}, not a mapping)")
    if not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
        raise refuse("cannot be rewritten: no write permission on the file or its directory")


def server_url(host: str, port: int = 6443) -> str:
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def for_project(k3s_yaml: str, name: str, server: str) -> dict:
    """k3s's admin kubeconfig, renamed to `name` and pointed at `server`."""
    try:
        data = yaml.safe_load(k3s_yaml)
        cluster = data["clusters"][0]["cluster"]
        user = data["users"][0]["user"]
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise PimlError(
            Problem(
                "kubeconfig",
                f"the server's /etc/rancher/k3s/k3s.yaml is not a kubeconfig ({type(exc).__name__})",
                "check k3s on the first server: sudo systemctl status k3s",
            ),
            EXIT_FAILED,
        ) from None
    cluster = dict(cluster, server=server)
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": name, "cluster": cluster}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "users": [{"name": name, "user": user}],
        "current-context": name,
    }


def repoint(path: Path, server: str, where: str) -> bool:
    """Point the project's kubeconfig (written by `for_project`) at another server of the same cluster (they share
    one CA, and every server's certificate names every server's address); True if it changed."""
    try:
        config = yaml.safe_load(path.read_text())
        config["clusters"][0]["cluster"]["server"] = server
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise PimlError(
            Problem(where, f"cannot point it at {server} ({type(exc).__name__})", "run piml up --until kubeconfig"),
            EXIT_FAILED,
        ) from None
    return store(path, dump(config))


def dump(config: dict) -> str:
    return yaml.safe_dump(config, default_flow_style=False, sort_keys=False)


@dataclass
class WriteResult:
    path: Path
    changed: bool
    backup: Path | None = None
    rewritten: bool = False  # True when the text splice was not possible and the file was written whole


def store(path: Path, text: str) -> bool:
    """Write `text` to `path` (0600) unless it already holds exactly that; True if written."""
    if path.exists() and path.read_text() == text and (path.stat().st_mode & 0o777) == 0o600:
        return False
    write_atomic(path, text, mode=0o600)
    return True


def merge_into(target: Path, ours: dict) -> WriteResult:
    """Put our three entries into `target`, replacing only entries with our names."""
    name = ours["current-context"]
    existing = target.read_text() if target.exists() else ""
    new, rewritten = merge_text(existing, ours, name)
    return _write(target, existing, new, rewritten)


def remove_from(target: Path, name: str) -> WriteResult:
    """Remove the entries named `name` (and clear current-context if it was ours)."""
    if not target.exists():
        return WriteResult(target, False)
    existing = target.read_text()
    new, rewritten = merge_text(existing, None, name)
    return _write(target, existing, new, rewritten)


def _write(target: Path, existing: str, new: str, rewritten: bool) -> WriteResult:
    if new == existing:
        return WriteResult(target, False)
    backup = None
    mode = 0o600
    if target.exists():
        mode = target.stat().st_mode & 0o777
        backup = target.with_name(target.name + ".piml.bak")
        shutil.copy2(target, backup)
        os.chmod(backup, 0o600)
    else:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(target, new, mode=mode)
    return WriteResult(target, True, backup, rewritten)


# -- the text splice ----------------------------------------------------------------------------------


def expected(existing: dict | None, ours: dict | None, name: str) -> dict:
    """What the merged file must parse to."""
    data = dict(existing or {})
    for section, _ in SECTIONS:
        kept = [e for e in (data.get(section) or []) if not (isinstance(e, dict) and e.get("name") == name)]
        if ours is not None:
            kept.append(ours[section][0])
        if kept or section in data or ours is not None:
            data[section] = kept
    if ours is not None:
        if not data.get("current-context"):
            data["current-context"] = name
        data.setdefault("apiVersion", "v1")
        data.setdefault("kind", "Config")
    elif data.get("current-context") == name:
        data["current-context"] = ""
    return data


def merge_text(existing: str, ours: dict | None, name: str) -> tuple[str, bool]:
    """(new text, whether it had to be rewritten whole). `ours` None: remove our entries."""
    try:
        parsed = yaml.safe_load(existing) if existing.strip() else None
    except yaml.YAMLError as exc:
        raise PimlError(
            Problem(
                str(default_target()),
                f"not valid YAML ({exc.problem if hasattr(exc, 'problem') else exc})",
                "fix or move the file, then run piml up --only kubeconfig",
            ),
            EXIT_FAILED,
        ) from None
    if parsed is not None and not isinstance(parsed, dict):
        raise PimlError(
            Problem(
                "kubeconfig",
                "the kubeconfig file is not a mapping",
                "fix or move it, then run piml up --only kubeconfig",
            ),
            EXIT_FAILED,
        )
    want = expected(parsed, ours, name)
    if parsed is None:
        return (dump(want) if ours is not None else existing), False
    try:
        text = _splice(existing, ours, name)
        if yaml.safe_load(text) == want:
            return text, False
    except (yaml.YAMLError, _Unusual):
        pass
    return dump(want), True


class _Unusual(Exception):
    pass


def _splice(existing: str, ours: dict | None, name: str) -> str:
    root = yaml.compose(existing, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode) or root.flow_style:
        raise _Unusual()
    lines = existing.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    values = {k.value: (k, v) for k, v in root.value if isinstance(k, yaml.ScalarNode)}
    edits: list[tuple[int, int, list[str]]] = []
    appended: list[str] = []
    for section, _ in SECTIONS:
        entry = _entry_lines(ours[section][0]) if ours is not None else []
        if section not in values:
            if entry:
                appended += [f"{section}:\n"] + entry
            continue
        key, value = values[section]
        if isinstance(value, yaml.SequenceNode) and not value.flow_style and value.value:
            starts = [_dash_line(lines, item) for item in value.value]
            end = value.end_mark.line if value.end_mark.column == 0 else value.end_mark.line + 1
            indent = len(lines[starts[0]]) - len(lines[starts[0]].lstrip(" "))
            kept: list[str] = []
            for item, a, b in zip(value.value, starts, starts[1:] + [end], strict=True):
                if _name_of(item) != name:
                    kept += lines[a:b]
            if not kept and not entry:
                edits.append((key.start_mark.line, end, [f"{section}: []\n"]))
            else:
                edits.append((starts[0], end, kept + [" " * indent + line if line.strip() else line for line in entry]))
        elif _is_empty(value) and key.start_mark.line == value.end_mark.line:
            if entry:
                edits.append((key.start_mark.line, key.start_mark.line + 1, [f"{section}:\n"] + entry))
        else:
            raise _Unusual()
    current = values.get("current-context")
    if ours is not None and (current is None or not current[1].value):
        if current is None:
            appended.append(f"current-context: {_scalar(name)}\n")
        else:
            edits.append(_replace_line(current, f"current-context: {_scalar(name)}\n"))
    elif ours is None and current is not None and current[1].value == name:
        edits.append(_replace_line(current, 'current-context: ""\n'))
    for start, end, new in sorted(edits, key=lambda e: e[0], reverse=True):
        lines[start:end] = new
    return "".join(lines + appended)


def _replace_line(pair, text: str) -> tuple[int, int, list[str]]:
    key, value = pair
    if key.start_mark.line != value.end_mark.line or key.start_mark.column != 0:
        raise _Unusual()
    return (key.start_mark.line, key.start_mark.line + 1, [text])


def _entry_lines(entry: dict) -> list[str]:
    return yaml.safe_dump([entry], default_flow_style=False, sort_keys=False).splitlines(keepends=True)


def _scalar(text: str) -> str:
    return yaml.safe_dump(text, default_style=None).splitlines()[0] if text else '""'


def _dash_line(lines: list[str], item) -> int:
    line = item.start_mark.line
    while line > 0 and not lines[line].lstrip().startswith("-"):
        line -= 1
    return line


def _name_of(item) -> str | None:
    if isinstance(item, yaml.MappingNode):
        for k, v in item.value:
            if isinstance(k, yaml.ScalarNode) and k.value == "name" and isinstance(v, yaml.ScalarNode):
                return v.value
    return None


def _is_empty(node) -> bool:
    return (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")) or (
        isinstance(node, yaml.SequenceNode) and not node.value
    )
