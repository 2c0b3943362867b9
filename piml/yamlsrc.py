"""Load YAML into plain Python values while remembering the line of every key.

Users' files (the inventory, piml.yaml) must get errors that point at `file:line`. PyYAML's
composed node tree knows the lines; we walk it once, build plain dicts/lists/scalars, and keep
a map from each value's path (a tuple of keys and indexes) to its line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from piml.errors import InputError, Problem

Key = str | int
YamlPath = tuple[Key, ...]


@dataclass
class YamlDoc:
    """A parsed YAML file: its data and where each piece of it stands."""

    source: str  # how to name the file in messages (a path, usually relative)
    data: Any
    lines: dict[YamlPath, int] = field(default_factory=dict)

    def line(self, path: YamlPath) -> int | None:
        """The line of `path`, or of its nearest parent that we know."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None

    def where(self, path: YamlPath = ()) -> str:
        line = self.line(path)
        return f"{self.source}:{line}" if line else self.source


class _Walker:
    """Turns a composed node tree into plain values, recording lines and problems."""

    def __init__(self, source: str):
        self.source = source
        self.lines: dict[YamlPath, int] = {}
        self.problems: list[Problem] = []
        self._constructor = yaml.SafeLoader("")
        self._active: set[int] = set()  # nodes on the current path: a recursive alias loops

    def _where(self, node: yaml.Node) -> str:
        return f"{self.source}:{node.start_mark.line + 1}"

    def value(self, node: yaml.Node, path: YamlPath) -> Any:
        if id(node) in self._active:
            self.problems.append(Problem(self._where(node), "an alias refers to itself", "remove the recursive alias"))
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return [self._item(child, path + (index,)) for index, child in enumerate(node.value)]
            return self._constructor.construct_object(node, deep=True)
        finally:
            self._active.discard(id(node))

    def _item(self, node: yaml.Node, path: YamlPath) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        return self.value(node, path)

    def _mapping(self, node: yaml.MappingNode, path: YamlPath) -> dict:
        self._constructor.flatten_mapping(node)  # applies YAML merge keys (<<)
        result: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(Problem(self._where(key_node), "a key is a list or mapping", "keys must be plain names"))
                continue
            key = self._constructor.construct_object(key_node)
            if key is None or isinstance(key, (bool, float)) or not isinstance(key, (str, int)):
                key = key_node.value  # `yes:` or `1.5:` mean a name here, not a value
            key = str(key) if not isinstance(key, int) else key
            if key in result:
                self.problems.append(Problem(self._where(key_node), f"key '{key}' appears twice", "keep only one of them"))
            self.lines[path + (key,)] = key_node.start_mark.line + 1
            result[key] = self.value(value_node, path + (key,))
        return result


def parse_yaml(text: str, source: str) -> YamlDoc:
    """Parse `text`; raise InputError (one line per problem) for anything that is not good YAML."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        what = exc.problem or exc.context or "not valid YAML"
        raise InputError(Problem(where, f"YAML syntax error: {what}", "fix the indentation or quoting on that line")) from None
    except yaml.YAMLError as exc:  # e.g. a character YAML does not allow
        raise InputError(Problem(source, f"not valid YAML: {str(exc).splitlines()[0]}", "save it as plain UTF-8 YAML")) from None
    except RecursionError:
        raise InputError(Problem(source, "YAML nested too deeply", "flatten the structure")) from None
    if root is None:
        return YamlDoc(source, None)
    walker = _Walker(source)
    walker.lines[()] = root.start_mark.line + 1
    try:
        data = walker.value(root, ())
    except yaml.YAMLError as exc:  # a value YAML cannot construct, e.g. a bad timestamp
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise InputError(Problem(where, f"bad YAML value: {getattr(exc, 'problem', None) or exc}", "quote the value")) from None
    except (RecursionError, ValueError, OverflowError) as exc:
        raise InputError(Problem(source, f"bad YAML value: {exc}", "quote the value")) from None
    if walker.problems:
        raise InputError(walker.problems)
    return YamlDoc(source, data, walker.lines)


def read_yaml(path: Path, source: str | None = None) -> YamlDoc:
    """Read and parse a YAML file, with file-level errors (missing, unreadable) as InputError."""
    source = source or str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(Problem(source, "no such file", "check the path, or run `piml init` to create a project")) from None
    except IsADirectoryError:
        raise InputError(Problem(source, "is a directory, not a file", "name the YAML file itself")) from None
    except OSError as exc:
        raise InputError(Problem(source, f"cannot read: {exc.strerror}", "check its permissions")) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(Problem(source, f"not UTF-8 text (byte {exc.start})", "save the file as UTF-8")) from None
    return parse_yaml(text, source)
