"""Turn the hosts of an Ansible inventory into validated piml nodes, reporting every problem at once."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from piml.errors import InputError, Problem, by_line
from piml.inventory.ansible import HostEntry, did_you_mean, read_groups
from piml.inventory.model import (
    ARCHES,
    MODELS,
    STORAGE_KINDS,
    TAINT_EFFECTS,
    Inventory,
    K3sVars,
    Node,
    RayWorker,
    Role,
    Taint,
)
from piml.yamlsrc import YamlDoc, read_yaml

# piml's own host variables; any other `piml_*` name is a typo we catch.
PIML_VARS = ("piml_model", "piml_arch", "piml_memory_gb", "piml_cpus", "piml_labels", "piml_taints", "piml_storage")
# What a `ray_external` host offers Ray (issue 13); on a k3s node they mean nothing, so they are refused there.
RAY_VARS = ("piml_ray_resources", "piml_ray_num_cpus", "piml_ray_num_gpus", "piml_ray_memory_gb", "piml_ray_python")
# k3s-ansible settings that apply to the whole cluster; understood and passed on, never rejected.
K3S_ANSIBLE_VARS = (
    "k3s_version",
    "token",
    "api_endpoint",
    "api_port",
    "extra_server_args",
    "extra_agent_args",
    "server_config_yaml",
    "agent_config_yaml",
    "cluster_context",
    "user_kubectl",
    "kubeconfig",
    "airgap_dir",
    "extra_manifests",
    "server_group",
    "agent_group",
    "use_external_database",
)
ROLE_GROUPS = {"server": Role.SERVER, "agent": Role.AGENT, "ray_external": Role.EXTERNAL}
ARCH_ALIASES = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "amd64", "amd64": "amd64"}
PI_MODELS = ("pi5", "cm4")

_DNS_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
NODE_NAME_RE = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
TAINT_RE = re.compile(r"^(?P<key>[^=:\s]+)(=(?P<value>[^:\s]*))?:(?P<effect>\S+)$")
PYTHON_VERSION_RE = re.compile(r"^3\.\d{1,2}(\.\d{1,3})?$")
# Ray 2.60's own rules for a node's resources (_private/resource_and_label_spec.py to_resource_dict): whole numbers,
# at most 100e12; CPU, GPU and memory have flags of their own; `node:` names are Ray's (node:IP, the head's).
RAY_MAX_QUANTITY = 100e12
RAY_OWN_RESOURCES = {
    "CPU": "piml_ray_num_cpus",
    "GPU": "piml_ray_num_gpus",
    "memory": "piml_ray_memory_gb",
    "object_store_memory": "nothing (Ray sizes it)",
}


def is_address(text: str) -> bool:
    """An IPv4/IPv6 address or a valid host name."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return bool(HOSTNAME_RE.match(text)) and not text.replace(".", "").isdigit()


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def check_node_name(name: str) -> str | None:
    """Why `name` cannot name a node, or None. Names become host names and Kubernetes node names."""
    if is_ip(name):
        return None  # k3s-ansible style: the address is the name
    if not NODE_NAME_RE.match(name) or len(name) > 253:
        return f"node name '{name}' is not a valid host name (lowercase letters, digits and '-', at most 63 per label)"
    return None


def check_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not NODE_NAME_RE.match(prefix)):
        return False
    return bool(LABEL_NAME_RE.match(name))


class _HostChecker:
    """Collects the problems of one host while building its Node."""

    def __init__(self, doc: YamlDoc, entry: HostEntry, inventory_dir: Path, problems: list[Problem]):
        self.doc, self.entry, self.inventory_dir, self.problems = doc, entry, inventory_dir, problems

    def where(self, var: str | None = None) -> str:
        path = self.entry.var_paths.get(var) if var else None
        return self.doc.where(path or self.entry.path)

    def bad(self, var: str | None, what: str, fix: str) -> None:
        self.problems.append(Problem(self.where(var), what, fix))

    def literal(self, var: str) -> Any:
        """The variable's value, refusing Jinja piml cannot evaluate."""
        value = self.entry.vars.get(var)
        if isinstance(value, str) and "{{" in value:
            self.bad(
                var,
                f"{var} of '{self.entry.name}' is a Jinja template, which piml does not evaluate",
                "give a literal value",
            )
            return None
        return value

    def node(self) -> Node | None:
        entry, name = self.entry, self.entry.name
        role = self.role()
        reason = check_node_name(name)
        if reason:
            self.bad(None, reason, "rename the host; set its address with `ansible_host`")

        for var in entry.vars:
            if isinstance(var, str) and var.startswith("piml_") and var not in PIML_VARS + RAY_VARS:
                self.bad(var, f"unknown piml variable '{var}'", did_you_mean(var, PIML_VARS + RAY_VARS))

        address = self.literal("ansible_host") or name
        name_is_address = "ansible_host" not in entry.vars
        if not (reason and name_is_address) and (not isinstance(address, str) or not is_address(address)):
            self.bad(
                "ansible_host",
                f"'{address}' is not a valid address for '{name}'",
                "use an IPv4/IPv6 address or a host name",
            )

        user = self.literal("ansible_user")
        if user is not None and (not isinstance(user, str) or not user or any(c.isspace() for c in user)):
            self.bad("ansible_user", f"ansible_user of '{name}' must be a user name", "for example `ansible_user: pi`")
            user = None

        port = self.literal("ansible_port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
            self.bad(
                "ansible_port",
                f"ansible_port of '{name}' must be a port number, not '{port}'",
                "use a number from 1 to 65535",
            )
            port = None

        key_file = self.key_file()
        model = self.choice("piml_model", MODELS)
        arch = self.arch(model)
        memory = self.gigabytes("piml_memory_gb", 8)
        cpus = self.count("piml_cpus", "CPUs", 4, least=1)
        storage = self.choice("piml_storage", STORAGE_KINDS)
        labels = self.labels()
        taints = self.taints()
        if role in (Role.SERVER, Role.AGENT):
            self.no_ray_vars()
        ray = self.ray_worker() if role is Role.EXTERNAL else None
        if role is None:
            return None
        return Node(
            name=name,
            address=str(address),
            role=role,
            user=user,
            port=port,
            key_file=key_file,
            model=model,
            arch=arch,
            memory_gb=memory,
            cpus=cpus,
            labels=labels,
            taints=taints,
            storage=storage,
            ray=ray,
            vars=dict(entry.vars),
            where=self.where(),
        )

    def no_ray_vars(self) -> None:
        for var in RAY_VARS:
            if var in self.entry.vars:
                self.bad(
                    var,
                    f"{var} of '{self.entry.name}' is for hosts in ray_external, and '{self.entry.name}' runs k3s",
                    "remove it, or move the host to the ray_external group",
                )

    def ray_worker(self) -> RayWorker:
        return RayWorker(
            resources=self.ray_resources(),
            num_cpus=self.count("piml_ray_num_cpus", "CPUs", 8),
            num_gpus=self.count("piml_ray_num_gpus", "GPUs", 1),
            memory_gb=self.gigabytes("piml_ray_memory_gb", 16),
            python=self.ray_python(),
        )

    def count(self, var: str, what: str, example: int, least: int = 0) -> int | None:
        """A whole number of `what` from `least` to 1024."""
        value = self.literal(var)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= 1024:
            self.bad(
                var,
                f"{var} of '{self.entry.name}' must be a whole number of {what}, not '{value}'",
                f"for example `{var}: {example}`",
            )
            return None
        return value

    def gigabytes(self, var: str, example: int) -> float | None:
        value = self.literal(var)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 4096:
            self.bad(
                var,
                f"{var} of '{self.entry.name}' must be a number of GB, not '{value}'",
                f"for example `{var}: {example}`",
            )
            return None
        return float(value)

    def ray_python(self) -> str | None:
        value = self.literal("piml_ray_python")
        if value is None:
            return None
        if not isinstance(value, str) or not PYTHON_VERSION_RE.match(value):
            self.bad(
                "piml_ray_python",
                f"piml_ray_python of '{self.entry.name}' must be a Python version such as '3.11', not '{value}'",
                "quote it (`piml_ray_python: '3.11'`: unquoted, YAML reads 3.10 as the number 3.1)",
            )
            return None
        return value

    def ray_resources(self) -> dict[str, int]:
        value = self.literal("piml_ray_resources")
        if value is None:
            return {}
        example = "for example `piml_ray_resources: {gpu_apple_mps: 1}`"
        if not isinstance(value, dict):
            self.bad("piml_ray_resources", f"piml_ray_resources of '{self.entry.name}' must be a mapping", example)
            return {}
        resources = {}
        for key, quantity in value.items():
            name = str(key)
            where = f"resource {name!r} of '{self.entry.name}'"  # repr: a name may hold anything, a newline too
            if not isinstance(key, str) or not name.strip() or name != name.strip():
                self.bad("piml_ray_resources", f"{where} is not a resource name", example)
            elif name in RAY_OWN_RESOURCES:
                self.bad(
                    "piml_ray_resources", f"{where} is set with its own variable", f"use {RAY_OWN_RESOURCES[name]}"
                )
            elif name.startswith("node:"):
                self.bad("piml_ray_resources", f"{where}: names starting node: are Ray's own", "choose another name")
            elif (
                isinstance(quantity, bool)
                or not isinstance(quantity, (int, float))
                or not float(quantity).is_integer()
                or not 0 < quantity <= RAY_MAX_QUANTITY
            ):
                self.bad(
                    "piml_ray_resources",
                    f"{where} is {quantity!r}, and Ray counts a node's resources in whole positive numbers",
                    example,
                )
            else:
                resources[name] = int(quantity)
        return resources

    def role(self) -> Role | None:
        roles = {ROLE_GROUPS[g] for g in self.entry.groups if g in ROLE_GROUPS}
        if len(roles) == 1:
            return roles.pop()
        if not roles:
            self.bad(
                None,
                f"host '{self.entry.name}' is in none of the groups server, agent, ray_external",
                "move it under `k3s_cluster: children: server:` or `agent:`",
            )
        else:
            names = " and ".join(sorted(r.value for r in roles))
            self.bad(None, f"host '{self.entry.name}' is in both {names}", "keep it in one role group")
        return None

    def key_file(self) -> Path | None:
        value = self.entry.vars.get("ansible_ssh_private_key_file")
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.bad(
                "ansible_ssh_private_key_file",
                "ansible_ssh_private_key_file must be a path",
                "give the path to a private key",
            )
            return None
        # `{{ inventory_dir }}` keeps scaffolded projects movable; it is the one Jinja variable we resolve.
        value = re.sub(r"\{\{\s*inventory_dir\s*\}\}", str(self.inventory_dir), value)
        if "{{" in value:
            self.bad(
                "ansible_ssh_private_key_file",
                "ansible_ssh_private_key_file uses Jinja other than {{ inventory_dir }}",
                "give a literal path",
            )
            return None
        return Path(value).expanduser()

    def choice(self, var: str, choices: tuple[str, ...]) -> str | None:
        value = self.literal(var)
        if value is None:
            return None
        if not isinstance(value, str) or value.lower() not in choices:
            self.bad(var, f"{var} of '{self.entry.name}' is '{value}'", did_you_mean(str(value), choices))
            return None
        return value.lower()

    def arch(self, model: str | None) -> str | None:
        value = self.literal("piml_arch")
        if value is None:
            return "arm64" if model in PI_MODELS else None
        arch = ARCH_ALIASES.get(str(value).lower())
        if arch is None:
            self.bad("piml_arch", f"piml_arch of '{self.entry.name}' is '{value}'", did_you_mean(str(value), ARCHES))
        elif model in PI_MODELS and arch != "arm64":
            self.bad(
                "piml_arch",
                f"'{self.entry.name}' is a {model} but piml_arch says {arch}",
                "Raspberry Pis are arm64: remove piml_arch",
            )
        return arch

    def labels(self) -> dict[str, str]:
        value = self.literal("piml_labels")
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.bad(
                "piml_labels",
                f"piml_labels of '{self.entry.name}' must be a mapping",
                "for example `piml_labels: {disk: nvme}`",
            )
            return {}
        labels = {}
        for key, label in value.items():
            text = "" if label is None else str(label).lower() if isinstance(label, bool) else str(label)
            if not check_label_key(str(key)) or not LABEL_VALUE_RE.match(text):
                self.bad(
                    "piml_labels",
                    f"label '{key}: {label}' of '{self.entry.name}' is not a valid Kubernetes label",
                    "use letters, digits, '-', '_', '.' (at most 63), optionally `prefix/` before the key",
                )
                continue
            labels[str(key)] = text
        return labels

    def taints(self) -> tuple[Taint, ...]:
        value = self.literal("piml_taints")
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.bad(
                "piml_taints",
                f"piml_taints of '{self.entry.name}' must be a list",
                'for example `piml_taints: ["gpu=true:NoSchedule"]`',
            )
            return ()
        taints = []
        for item in value:
            match = TAINT_RE.match(str(item))
            if not match or match["effect"] not in TAINT_EFFECTS or not check_label_key(match["key"]):
                self.bad(
                    "piml_taints",
                    f"taint '{item}' of '{self.entry.name}' is not KEY[=VALUE]:EFFECT",
                    f"EFFECT is one of {', '.join(TAINT_EFFECTS)}",
                )
                continue
            taints.append(Taint(match["key"], match["value"] or "", match["effect"]))
        return tuple(taints)


K3S_VERSION_RE = re.compile(r"^v\d+\.\d+\.\d+\+k3s\d+$")


def _check_cluster_vars(doc: YamlDoc, tree, problems: list[Problem]) -> K3sVars:
    """k3s-ansible settings from the cluster's groups, typed: what piml reads itself must be what it looks like
    (`k3s_version: 1.30` is the number 1.3 to YAML); `server_config_yaml` and friends must be YAML."""
    settings: dict[str, Any] = {}
    for group in ("all", "k3s_cluster"):
        settings.update({k: v for k, v in tree.group_vars.get(group, {}).items() if k in K3S_ANSIBLE_VARS})

    def where(var: str) -> str:
        group = "k3s_cluster" if var in tree.group_vars.get("k3s_cluster", {}) else "all"
        return doc.where(tree.group_paths.get(group, ()) + ("vars", var))

    def problem(var: str, what: str, fix: str) -> None:
        problems.append(Problem(where(var), what, fix))

    def text(var: str, fix: str, template_ok: bool = False) -> str | None:
        """A literal string setting; a number or a list is a problem, and so is Jinja that piml would have to evaluate."""
        value = settings.get(var)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            problem(var, f"`{var}` is {value!r}, not text", fix)
            return None
        if not isinstance(value, str):
            problem(
                var,
                f"`{var}` is the number {value!r} (YAML reads an unquoted {value!r} as a number)",
                f"write it in quotes; {fix}",
            )
            return None
        if "{{" in value:
            if not template_ok:
                problem(var, f"`{var}` is a Jinja template, which piml does not evaluate", f"give it literally; {fix}")
            return None
        return value

    version = text("k3s_version", "e.g. k3s_version: v1.36.3+k3s1")
    if version is not None and not K3S_VERSION_RE.match(version):
        problem(
            "k3s_version",
            f"`k3s_version` is {version!r}, not a k3s release",
            "write it like v1.36.3+k3s1 (see k3s's releases)",
        )
        version = None
    token = text("token", "or leave it out and let piml generate one into .piml/k3s-token")
    if token is not None and not token.strip():
        token = None
    endpoint = text("api_endpoint", "a host name or address the agents reach the servers at", template_ok=True)
    airgap = text("airgap_dir", "a directory with the k3s binary, images tarball and install.sh")
    port = settings.get("api_port", 6443)
    if isinstance(port, str) and port.strip().isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        shown = (
            "a Jinja template, which piml does not evaluate" if isinstance(port, str) and "{{" in port else repr(port)
        )
        problem("api_port", f"`api_port` is {shown}", "give the API server's port as a number, e.g. 6443")
        port = 6443
    extra = {
        var: text(var, f"k3s flags in one line, e.g. {var}: --node-ip=10.0.0.5", template_ok=True) or ""
        for var in ("extra_server_args", "extra_agent_args")
    }

    for var in ("server_config_yaml", "agent_config_yaml"):
        value = settings.get(var)
        if value is None:
            continue
        if not isinstance(value, str):
            problem(var, f"{var} must be a YAML text block", f"write `{var}: |` followed by the YAML")
            continue
        import yaml

        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" (its line {mark.line + 1})" if mark else ""
            problem(var, f"{var} is not valid YAML{at}", "fix the YAML inside the text block")
            continue
        if parsed is not None and not isinstance(parsed, dict):
            problem(
                var, f"{var} must hold a YAML mapping of k3s settings", 'for example `write-kubeconfig-mode: "0644"`'
            )
    return K3sVars(
        k3s_version=version,
        token=token,
        api_endpoint=endpoint,
        api_port=port,
        airgap_dir=airgap,
        extra_server_args=extra["extra_server_args"],
        extra_agent_args=extra["extra_agent_args"],
    )


def build_inventory(doc: YamlDoc, path: Path) -> Inventory:
    tree = read_groups(doc)
    problems = list(tree.problems)
    nodes: list[Node] = []
    for entry in tree.hosts.values():
        node = _HostChecker(doc, entry, path.parent.resolve(), problems).node()
        if node:
            nodes.append(node)
    k3s_vars = _check_cluster_vars(doc, tree, problems)

    # Checked over every host entry, so a host with other problems still counts.
    seen: dict[str, str] = {}
    for entry in tree.hosts.values():
        address = entry.vars.get("ansible_host") or entry.name
        if not isinstance(address, str):
            continue
        if address in seen:
            where = doc.where(entry.var_paths.get("ansible_host") or entry.path)
            problems.append(
                Problem(
                    where,
                    f"'{entry.name}' and '{seen[address]}' have the same address {address}",
                    "give each node its own address",
                )
            )
        seen.setdefault(address, entry.name)
    servers = [n for n in nodes if n.role is Role.SERVER]
    warnings = []
    if not servers and not any("no groups" in p.what for p in problems):
        problems.append(
            Problem(
                doc.where(tree.group_paths.get("k3s_cluster", ())),
                "no server: k3s needs at least one",
                "put a host under `k3s_cluster: children: server: hosts:`",
            )
        )
    elif len(servers) % 2 == 0 and servers:
        warnings.append(
            Problem(
                doc.where(tree.group_paths.get("server", ())),
                f"{len(servers)} servers: an even number cannot keep etcd quorum when one fails",
                "use 1, 3 or 5 servers",
                warning=True,
            )
        )
    if problems:
        raise InputError(by_line(problems))
    # Servers first, then agents, then external workers; inventory order within a role.
    nodes.sort(key=lambda n: list(Role).index(n.role))
    return Inventory(path=path, source=doc.source, nodes=tuple(nodes), k3s_vars=k3s_vars, warnings=tuple(warnings))


def parse_inventory_text(text: str, source: str, path: Path) -> Inventory:
    """Validate inventory text that is not (yet) a file, e.g. one `piml init` is about to write."""
    from piml.yamlsrc import parse_yaml

    return build_inventory(parse_yaml(text, source), Path(path))


def load_inventory(path: Path, source: str | None = None) -> Inventory:
    """Read, parse and validate an inventory file. Raises InputError listing every problem."""
    return build_inventory(read_yaml(path, source), Path(path))
