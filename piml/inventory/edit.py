"""Add a host to, or take one out of, the inventory's text, keeping the user's comments and layout.

`piml node add` / `piml node remove` change one host's lines and nothing else. The result is parsed again and
must equal the old inventory with exactly that change; when the layout is one these edits do not handle (flow
style, anchors, hosts outside `k3s_cluster.children.<role>.hosts`), the answer is None and the caller says what
to change by hand.
"""

from __future__ import annotations

import copy

import yaml


def with_host(text: str, role: str, name: str, address: str) -> str | None:
    """`text` with host `name` (ansible_host `address`) added to group `role` (server | agent)."""
    data, root = _load(text)
    if data is None:
        return None
    hosts_key, hosts = _hosts_node(root, role)
    if hosts_key is None or hosts is None:
        return None
    if isinstance(hosts, yaml.MappingNode) and hosts.flow_style and not hosts.value:  # `hosts: {}`
        indent = " " * (hosts_key.start_mark.column + 2)
        entry = f"\n{indent}{name}:\n{indent}  ansible_host: {address}"
        edited = text[: hosts_key.end_mark.index] + ":" + entry + text[hosts.end_mark.index :]
    elif isinstance(hosts, yaml.MappingNode) and not hosts.flow_style and hosts.value:
        first = hosts.value[0][0]
        indent = " " * first.start_mark.column
        last_value = hosts.value[-1][1]
        cut = _line_start(text, last_value.end_mark.index) if last_value.end_mark.column else last_value.end_mark.index
        if last_value.end_mark.index >= len(text) and not text.endswith("\n"):
            text, cut = text + "\n", len(text) + 1
        edited = text[:cut] + f"{indent}{name}:\n{indent}  ansible_host: {address}\n" + text[cut:]
    else:
        return None
    wanted = copy.deepcopy(data)
    group = wanted["k3s_cluster"]["children"][role]
    group["hosts"] = {**(group.get("hosts") or {}), name: {"ansible_host": address}}
    return _checked(edited, wanted)


def without_host(text: str, role: str, name: str) -> str | None:
    """`text` without host `name` in group `role`."""
    data, root = _load(text)
    if data is None:
        return None
    hosts_key, hosts = _hosts_node(root, role)
    if not isinstance(hosts, yaml.MappingNode) or hosts.flow_style:
        return None
    keys = [key.value for key, _ in hosts.value]
    if name not in keys:
        return None
    index = keys.index(name)
    start = _line_start(text, hosts.value[index][0].start_mark.index)
    if index + 1 < len(keys):
        end = _line_start(text, hosts.value[index + 1][0].start_mark.index)
        edited = text[:start] + text[end:]
    else:
        value_end = hosts.value[index][1].end_mark
        end = _line_start(text, value_end.index) if value_end.column else value_end.index
        edited = text[:start] + text[end:]
        if len(keys) == 1 and hosts_key is not None:  # no host left: `hosts: {}`, as piml init writes it
            colon = hosts_key.end_mark.index
            edited = edited[:colon] + ": {}" + edited[colon + 1 :]
    wanted = copy.deepcopy(data)
    del wanted["k3s_cluster"]["children"][role]["hosts"][name]
    return _checked(edited, wanted)


def _load(text: str) -> tuple[dict | None, yaml.Node | None]:
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError:
        return None, None
    if not isinstance(data, dict) or not isinstance(root, yaml.MappingNode):
        return None, None
    return data, root


def _child(node: yaml.Node | None, key: str) -> tuple[yaml.Node | None, yaml.Node | None]:
    if not isinstance(node, yaml.MappingNode) or node.flow_style:
        return None, None
    for key_node, value in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return key_node, value
    return None, None


def _hosts_node(root: yaml.Node | None, role: str) -> tuple[yaml.Node | None, yaml.Node | None]:
    _, cluster = _child(root, "k3s_cluster")
    _, children = _child(cluster, "children")
    _, group = _child(children, role)
    if not isinstance(group, yaml.MappingNode) or group.flow_style:
        return None, None
    for key_node, value in group.value:
        if key_node.value == "hosts":
            return key_node, value
    return None, None


def _line_start(text: str, index: int) -> int:
    return text.rfind("\n", 0, index) + 1


def _checked(edited: str, wanted: dict) -> str | None:
    try:
        return edited if yaml.safe_load(edited) == wanted else None
    except yaml.YAMLError:
        return None
