"""Read an Ansible YAML inventory the way Ansible does: groups, children, vars, hosts.

Only the structure is handled here; what the variables mean is `validate.py`'s job. A host's
variables come from every group it sits in, outer groups first (a child group's vars win over
its parent's, as in Ansible), then from its own entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from difflib import get_close_matches
from typing import Any

from piml.errors import Problem
from piml.yamlsrc import YamlDoc, YamlPath

GROUP_KEYS = ("hosts", "vars", "children")


@dataclass
class HostEntry:
    name: str
    groups: list[str] = field(default_factory=list)  # every group it is in, outer first
    vars: dict[str, Any] = field(default_factory=dict)
    var_paths: dict[str, YamlPath] = field(default_factory=dict)  # where each var was set
    path: YamlPath = ()  # its first entry under some `hosts:`


@dataclass
class GroupTree:
    hosts: dict[str, HostEntry]
    group_vars: dict[str, dict[str, Any]]  # group name -> its own vars
    group_paths: dict[str, YamlPath]
    problems: list[Problem]

    def refuse(self, where: str, what: str, fix: str) -> None:
        self.problems.append(Problem(where, what, fix))


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    match = get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else f"use one of: {', '.join(choices)}"


def read_groups(doc: YamlDoc) -> GroupTree:
    tree = GroupTree({}, {}, {}, [])
    if doc.data is None:
        tree.refuse(doc.source, "the inventory is empty", "run `piml init` or add a `k3s_cluster` group")
        return tree
    if not isinstance(doc.data, dict):
        tree.refuse(doc.where(), "the inventory must be a mapping of groups", "start it with `k3s_cluster:`")
        return tree
    for name, body in doc.data.items():
        _group(doc, tree, str(name), body, (name,), [], {}, {})
    return tree


def _group(doc, tree, name, body, path, parents, inherited, inherited_paths) -> None:
    if name in parents:
        tree.refuse(doc.where(path), f"group '{name}' contains itself", "remove the loop in `children`")
        return
    tree.group_paths.setdefault(name, path)
    if body is None:
        return
    if not isinstance(body, dict):
        tree.refuse(doc.where(path), f"group '{name}' must be a mapping", "give it `hosts:`, `vars:` or `children:`")
        return
    for key in body:
        if key not in GROUP_KEYS:
            tree.refuse(
                doc.where(path + (key,)),
                f"unknown key '{key}' in group '{name}'",
                did_you_mean(str(key), GROUP_KEYS),
            )
    group_vars = body.get("vars") or {}
    if not isinstance(group_vars, dict):
        tree.refuse(
            doc.where(path + ("vars",)),
            f"`vars` of group '{name}' must be a mapping",
            "write `name: value` lines under it",
        )
        group_vars = {}
    tree.group_vars.setdefault(name, {}).update(group_vars)
    scope = {**inherited, **group_vars}
    scope_paths = {**inherited_paths, **{k: path + ("vars", k) for k in group_vars}}
    lineage = parents + [name]

    hosts = body.get("hosts") or {}
    if isinstance(hosts, list):  # a common slip: `hosts: [a, b]`
        tree.refuse(
            doc.where(path + ("hosts",)),
            f"`hosts` of group '{name}' is a list",
            "write each host as a key: `pi1:` on its own line",
        )
        hosts = {}
    elif not isinstance(hosts, dict):
        tree.refuse(
            doc.where(path + ("hosts",)),
            f"`hosts` of group '{name}' must be a mapping",
            "write each host as a key: `pi1:`",
        )
        hosts = {}
    for host, host_vars in hosts.items():
        host_path = path + ("hosts", host)
        if host_vars is not None and not isinstance(host_vars, dict):
            tree.refuse(
                doc.where(host_path),
                f"host '{host}' must have a mapping of variables or nothing",
                "write `name: value` lines under it, or leave it empty",
            )
            host_vars = {}
        entry = tree.hosts.setdefault(str(host), HostEntry(str(host), path=host_path))
        for group in lineage:
            if group not in entry.groups:
                entry.groups.append(group)
        # Group vars never override what the host's own entry set; host vars override all.
        for key, value in scope.items():
            if key not in entry.var_paths or entry.var_paths[key][-3:-1] != ("hosts", host):
                entry.vars[key] = value
                entry.var_paths[key] = scope_paths[key]
        for key, value in (host_vars or {}).items():
            entry.vars[key] = value
            entry.var_paths[key] = host_path + (key,)

    children = body.get("children") or {}
    if not isinstance(children, dict):
        tree.refuse(
            doc.where(path + ("children",)),
            f"`children` of group '{name}' must be a mapping of groups",
            "write each child group as a key",
        )
        return
    for child, child_body in children.items():
        _group(doc, tree, str(child), child_body, path + ("children", child), lineage, scope, scope_paths)
