"""Set `k3s.version` in piml.yaml's text, keeping the user's comments and layout.

`piml upgrade --k3s` moves the pin only once every node runs the new version. The edit touches one value (or
adds one line); the result is parsed again and must equal the old settings with only that value changed,
else nothing is written and the caller says what to set by hand.
"""

from __future__ import annotations

import copy

import yaml


def with_k3s_version(text: str, version: str) -> str | None:
    """`text` with k3s.version set to `version`, or None when its layout is not one this can edit safely."""
    try:
        before = yaml.safe_load(text) if text.strip() else {}
        root = yaml.compose(text) if text.strip() else None
    except yaml.YAMLError:
        return None
    if before is None:
        before = {}
    if not isinstance(before, dict):
        return None
    edited = _edit(text, root, version)
    if edited is None:
        return None
    wanted = copy.deepcopy(before)
    wanted.setdefault("k3s", {})
    if not isinstance(wanted["k3s"], dict):
        return None
    wanted["k3s"]["version"] = version
    try:
        after = yaml.safe_load(edited)
    except yaml.YAMLError:
        return None
    return edited if after == wanted else None


def _edit(text: str, root: yaml.Node | None, version: str) -> str | None:
    if root is not None and not (isinstance(root, yaml.MappingNode) and not root.flow_style):
        return None
    for key, value in root.value if root is not None else []:
        if key.value != "k3s":
            continue
        if not isinstance(value, yaml.MappingNode) or value.flow_style or not value.value:
            return None
        for child_key, child_value in value.value:
            if child_key.value == "version":
                if not isinstance(child_value, yaml.ScalarNode):
                    return None
                start, end = child_value.start_mark.index, child_value.end_mark.index
                return text[:start] + version + text[end:]
        first_key = value.value[0][0]
        line_start = text.rfind("\n", 0, first_key.start_mark.index) + 1
        indent = text[line_start : first_key.start_mark.index]
        if indent.strip():
            return None
        return text[:line_start] + f"{indent}version: {version}\n" + text[line_start:]
    return text + ("" if text.endswith("\n") or not text else "\n") + f"k3s:\n  version: {version}\n"
