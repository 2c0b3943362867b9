"""Load YAML into plain Python values while remembering the line of every key.

Users' files (the inventory, piml.yaml) must get errors that point at `file:line`. PyYAML's
composed node tree knows the lines; we walk it once, build plain dicts/lists/scalars, and keep
a map from each value's path (a tuple of keys and indexes) to its line.

Aliases make a small file stand for a huge tree ("billion laughs": nine aliases of nine aliases of ...),
so the input is bounded before anything is built: its size, its nesting, how many values it holds once
every alias and merge key (`<<`) is expanded, and how much text those values add up to. The expanded
size is computed on the composed node graph, each node once, so the check itself stays small.
"""

from __future__ import annotations

import os
import select
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from piml.errors import InputError, Problem

Key = str | int
YamlPath = tuple[Key, ...]

# An inventory or piml.yaml is a few KB and a few hundred values; these bounds are far above that and far
# below what hurts (the walk of 100 000 values takes about a second and tens of MB).
MAX_BYTES = 1024 * 1024
PIPE_WAIT_S = 10.0  # a FIFO given as a file: how long to wait for what its writer sends
MAX_DEPTH = 50
MAX_VALUES = 100_000
MAX_TEXT = 8 * 1024 * 1024  # characters of all scalars together, aliases expanded
_BOMB_FIX = "write the values out instead of through aliases (`*name`) or merge keys (`<<`)"


def _too_big_problem(source: str, text: str | bytes) -> Problem:
    line = text[:MAX_BYTES].count("\n" if isinstance(text, str) else b"\n") + 1
    return Problem(
        f"{source}:{line}",
        f"the file is larger than {MAX_BYTES // 1024} KiB, more than piml reads from one YAML file",
        "check that this is the right file (an inventory or piml.yaml is a few KB)",
    )


class _Loader(yaml.SafeLoader):
    """PyYAML's safe composer, stopped early when the input nests too deeply or holds too many values."""

    def __init__(self, stream: str, source: str):
        super().__init__(stream)
        self._source = source
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            return super().compose_node(parent, index)
        where = f"{self._source}:{event.start_mark.line + 1}"
        self._nodes += 1
        if self._nodes > MAX_VALUES:
            raise InputError(
                Problem(
                    where,
                    f"more than {MAX_VALUES} values",
                    "check that this is the right file (an inventory or piml.yaml holds a few hundred)",
                )
            )
        if self._depth >= MAX_DEPTH:
            raise InputError(Problem(where, f"YAML nested more than {MAX_DEPTH} levels deep", "flatten the structure"))
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse a node graph whose aliases expand beyond the bounds, or that refers to itself.

    One post-order pass over the graph (each node once, no recursion): a node's expanded size is
    itself plus its children's, so a chain of aliases multiplies and is caught at the node where
    the product first passes the bound, before anything is expanded.
    """
    sizes: dict[int, tuple[int, int, int]] = {}  # id(node) -> (values, characters, depth), aliases expanded
    open_: set[int] = set()  # nodes whose subtree is being measured: the path from the root
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, measured = stack.pop()
        key = id(node)
        if not measured:
            if key in sizes:
                continue
            open_.add(key)
            stack.append((node, True))
            for child in _children(node):
                if id(child) in open_:
                    raise InputError(
                        Problem(
                            f"{source}:{child.start_mark.line + 1}",
                            "an alias refers to itself",
                            "remove the recursive alias",
                        )
                    )
                if id(child) not in sizes:
                    stack.append((child, False))
            continue
        open_.discard(key)
        values, text, depth = 1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0, 1
        for child in _children(node):
            child_values, child_text, child_depth = sizes[id(child)]
            values, text, depth = values + child_values, text + child_text, max(depth, child_depth + 1)
        sizes[key] = (values, text, depth)
        where = f"{source}:{node.start_mark.line + 1}"
        if values > MAX_VALUES:
            raise InputError(Problem(where, f"its aliases expand to more than {MAX_VALUES} values", _BOMB_FIX))
        if text > MAX_TEXT:
            raise InputError(
                Problem(where, f"its aliases expand to more than {MAX_TEXT // (1024 * 1024)} MiB of text", _BOMB_FIX)
            )
        if depth > MAX_DEPTH:
            raise InputError(Problem(where, f"its aliases nest more than {MAX_DEPTH} levels deep", _BOMB_FIX))


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
        self._merged: dict[int, int] = {}  # id(mapping) -> how many of its entries came from merge keys

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
        if id(node) not in self._merged:
            own = sum(1 for key_node, _ in node.value if key_node.tag != "tag:yaml.org,2002:merge")
            self._constructor.flatten_mapping(node)  # applies YAML merge keys (<<): merged entries first, then its own
            self._merged[id(node)] = len(node.value) - own
        merged = self._merged[id(node)]
        result: dict = {}
        own_keys: set = set()
        for index, (key_node, value_node) in enumerate(node.value):
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append(
                    Problem(self._where(key_node), "a key is a list or mapping", "keys must be plain names")
                )
                continue
            key = self._constructor.construct_object(key_node)
            if key is None or isinstance(key, (bool, float)) or not isinstance(key, (str, int)):
                key = key_node.value  # `yes:` or `1.5:` mean a name here, not a value
            key = str(key) if not isinstance(key, int) else key
            if index >= merged:  # a merged key may be set again (that is what merging is for), an own key only once
                if key in own_keys:
                    self.problems.append(
                        Problem(self._where(key_node), f"key '{key}' appears twice", "keep only one of them")
                    )
                own_keys.add(key)
            self.lines[path + (key,)] = key_node.start_mark.line + 1
            result[key] = self.value(value_node, path + (key,))
        return result


def parse_yaml(text: str, source: str) -> YamlDoc:
    """Parse `text`; raise InputError (one line per problem) for anything that is not good YAML."""
    if len(text) > MAX_BYTES:
        raise InputError(_too_big_problem(source, text))
    loader = None
    try:
        loader = _Loader(text, source)  # its reader already refuses characters YAML does not allow
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        what = exc.problem or exc.context or "not valid YAML"
        raise InputError(
            Problem(where, f"YAML syntax error: {what}", "fix the indentation or quoting on that line")
        ) from None
    except yaml.YAMLError as exc:  # e.g. a character YAML does not allow
        raise InputError(
            Problem(source, f"not valid YAML: {str(exc).splitlines()[0]}", "save it as plain UTF-8 YAML")
        ) from None
    except RecursionError:
        raise InputError(Problem(source, "YAML nested too deeply", "flatten the structure")) from None
    finally:
        if loader is not None:
            loader.dispose()
    if root is None:
        return YamlDoc(source, None)
    _check_expansion(root, source)
    walker = _Walker(source)
    walker.lines[()] = root.start_mark.line + 1
    try:
        data = walker.value(root, ())
    except yaml.YAMLError as exc:  # a value YAML cannot construct, e.g. a bad timestamp
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise InputError(
            Problem(where, f"bad YAML value: {getattr(exc, 'problem', None) or exc}", "quote the value")
        ) from None
    except (RecursionError, ValueError, OverflowError) as exc:
        raise InputError(Problem(source, f"bad YAML value: {exc}", "quote the value")) from None
    if walker.problems:
        raise InputError(walker.problems)
    return YamlDoc(source, data, walker.lines)


def _read_bounded(path: Path) -> bytes:
    """At most MAX_BYTES + 1 bytes (/dev/zero is not read forever); a FIFO (`-i <(...)`) within PIPE_WAIT_S:
    opening one blocks until a writer comes, which may be never."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            os.set_blocking(fd, True)
            chunks, size = [], 0
            while size <= MAX_BYTES and (chunk := os.read(fd, MAX_BYTES + 1 - size)):
                chunks.append(chunk)
                size += len(chunk)
            return b"".join(chunks)
        deadline = time.monotonic() + PIPE_WAIT_S
        chunks, size, poller = [], 0, select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP)
        while size <= MAX_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if not poller.poll(left * 1000):
                continue
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_yaml(path: Path, source: str | None = None) -> YamlDoc:
    """Read and parse a YAML file, with file-level errors (missing, unreadable) as InputError."""
    source = source or str(path)
    try:
        raw = _read_bounded(path)
    except TimeoutError:
        raise InputError(
            Problem(
                source,
                f"nothing came through this pipe within {PIPE_WAIT_S:.0f} s",
                "name a regular file, or feed the pipe (e.g. -i <(cat hosts.yml))",
            )
        ) from None
    except FileNotFoundError:
        raise InputError(
            Problem(source, "no such file", "check the path, or run `piml init` to create a project")
        ) from None
    except IsADirectoryError:
        raise InputError(Problem(source, "is a directory, not a file", "name the YAML file itself")) from None
    except OSError as exc:
        raise InputError(Problem(source, f"cannot read: {exc.strerror}", "check its permissions")) from None
    if len(raw) > MAX_BYTES:
        raise InputError(_too_big_problem(source, raw))
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(Problem(source, f"not UTF-8 text (byte {exc.start})", "save the file as UTF-8")) from None
    return parse_yaml(text, source)
