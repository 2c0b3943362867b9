"""`piml init`: write a new project (inventory, piml.yaml, .piml/ with the SSH key) all or nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from piml.config import commented_defaults
from piml.errors import InputError, Problem
from piml.fsutil import make_private_dir
from piml.inventory.model import MODELS, Role
from piml.inventory.validate import check_node_name, is_address, parse_inventory_text
from piml.project import CONFIG, INVENTORY, SSH_KEY, STATE_DIR
from piml.sshkeys import new_ed25519, public_key_of

ROLE_WORDS = {"server": Role.SERVER, "agent": Role.AGENT, "external": Role.EXTERNAL}


@dataclass(frozen=True)
class NodeSpec:
    name: str
    address: str
    role: Role | None  # None: decided by position (first node server, the rest agents)


def parse_node_spec(text: str) -> NodeSpec:
    """`NAME=ADDRESS[:ROLE]` (or a bare NAME that is also its address), as given to --node."""
    where = f"--node {text}"
    name, sep, rest = text.strip().partition("=")
    if not sep:
        name, rest = text.strip(), text.strip()
    role = None
    head, colon, tail = rest.rpartition(":")
    if colon and tail.lower() in ROLE_WORDS:
        rest, role = head, ROLE_WORDS[tail.lower()]
    elif colon and tail.isalpha() and is_address(head.strip("[]")):
        raise InputError(Problem(where, f"unknown role '{tail}'", "use server, agent or external"))
    address = rest.strip("[]")
    if not name:
        raise InputError(
            Problem(where, "the node has no name", "write NAME=ADDRESS[:ROLE], e.g. pi1=192.168.1.21:server")
        )
    reason = check_node_name(name)
    if reason:
        raise InputError(Problem(where, reason, "write NAME=ADDRESS[:ROLE], e.g. pi1=192.168.1.21"))
    if not address or not is_address(address):
        raise InputError(
            Problem(
                where,
                f"'{address}' is not an IP address or host name",
                "write NAME=ADDRESS[:ROLE], e.g. pi1=192.168.1.21",
            )
        )
    return NodeSpec(name, address, role)


def assign_roles(specs: list[NodeSpec]) -> list[NodeSpec]:
    """Fill in default roles (the first node serves unless any is named server) and check the set."""
    problems = []
    seen_names: set[str] = set()
    seen_addresses: set[str] = set()
    for spec in specs:
        if spec.name in seen_names:
            problems.append(Problem("--node", f"node '{spec.name}' is given twice", "give each node once"))
        if spec.address in seen_addresses:
            problems.append(
                Problem("--node", f"address {spec.address} is given twice", "give each node its own address")
            )
        seen_names.add(spec.name)
        seen_addresses.add(spec.address)
    if problems:
        raise InputError(problems)
    any_server = any(s.role is Role.SERVER for s in specs)
    result = []
    for index, spec in enumerate(specs):
        role = spec.role or (Role.SERVER if index == 0 and not any_server else Role.AGENT)
        result.append(NodeSpec(spec.name, spec.address, role))
    if not any(s.role is Role.SERVER for s in result):
        raise InputError(
            Problem("--node", "no server among the nodes", "mark one with :server, e.g. --node pi1=192.168.1.21:server")
        )
    return result


def _scalar(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def inventory_text(
    specs: list[NodeSpec], user: str, key_path: str, model: str | None, memory_gb: float | None = None
) -> str:
    """The inventory in k3s-ansible's layout, readable by `ansible-inventory` and by people."""

    def hosts(role: Role, indent: str) -> list[str]:
        lines = []
        for spec in (s for s in specs if s.role is role):
            if spec.address == spec.name:
                lines.append(f"{indent}{_scalar(spec.name)}:")
            else:
                lines += [f"{indent}{_scalar(spec.name)}:", f"{indent}  ansible_host: {_scalar(spec.address)}"]
        return lines

    lines = [
        "# piml inventory: an Ansible inventory in k3s-ansible's layout. `ansible-playbook -i` reads it as is.",
        "# Per host you may add: ansible_host, ansible_user, ansible_port, ansible_ssh_private_key_file,",
        "#   piml_model (pi5|cm4|other), piml_arch (arm64|amd64), piml_memory_gb, piml_cpus, piml_storage (sd|emmc|nvme|usb),",
        '#   piml_labels {key: value}, piml_taints ["key=value:NoSchedule"].',
        "k3s_cluster:",
        "  children:",
        "    server:",
        "      hosts:",
        *hosts(Role.SERVER, "        "),
        "    agent:",
    ]
    agents = hosts(Role.AGENT, "        ")
    lines += ["      hosts:", *agents] if agents else ["      hosts: {}"]
    access = [f"    ansible_user: {_scalar(user)}", f"    ansible_ssh_private_key_file: {_scalar(key_path)}"]
    lines += ["  vars:", *access]
    if model:
        lines.append(f"    piml_model: {model}")
    if memory_gb:
        lines.append(f"    piml_memory_gb: {memory_gb:g}")
    external = hosts(Role.EXTERNAL, "    ")
    if external:
        lines += [
            "# Machines outside Kubernetes that join Ray as workers.",
            "ray_external:",
            "  hosts:",
            *external,
            "  vars:",
            *access,
        ]
    return "\n".join(lines) + "\n"


def existing_project_files(root: Path) -> list[Path]:
    return [root / p for p in (INVENTORY, CONFIG) if (root / p).exists()]


def init_project(
    root: Path,
    specs: list[NodeSpec],
    user: str,
    ssh_key: Path | None,
    model: str | None,
    force: bool,
    memory_gb: float | None = None,
) -> list[Path]:
    """Create the project at `root`. Returns the files written. All or nothing.

    With `force`, an existing inventory and piml.yaml are replaced (the old ones kept as *.bak);
    an existing .piml/ key is always kept, because the nodes already trust it.
    """
    if model is not None and model not in MODELS:
        raise InputError(Problem("--model", f"unknown model '{model}'", f"use one of {', '.join(MODELS)}"))
    if memory_gb is not None and not 0 < memory_gb <= 4096:
        raise InputError(
            Problem(
                "--memory-gb", f"'{memory_gb:g}' is not a memory size", "give the boards' RAM in GB, e.g. --memory-gb 8"
            )
        )
    if not user or any(c.isspace() for c in user):
        raise InputError(Problem("--user", f"'{user}' is not a user name", "for example --user pi"))
    existing = existing_project_files(root)
    if existing and not force:
        names = ", ".join(str(p.relative_to(root)) for p in existing)
        raise InputError(
            Problem(
                str(root),
                f"already a piml project ({names})",
                "pass --force to rewrite inventory and piml.yaml (the SSH key is kept)",
            )
        )
    if root.exists() and not root.is_dir():
        raise InputError(Problem(str(root), "exists and is not a directory", "choose another project directory"))

    specs = assign_roles(specs)
    key_file = root / SSH_KEY
    if ssh_key is not None:
        public_key_of(ssh_key)  # fail now, before writing anything, if it is no usable key
        key_ref = str(Path(ssh_key).expanduser().resolve())
    else:
        key_ref = "{{ inventory_dir }}/../" + str(SSH_KEY)
        if key_file.exists() or key_file.is_symlink():  # kept (the nodes trust it), so it must be a key ssh will use
            try:
                public_key_of(key_file, where=str(key_file))
            except InputError as exc:
                problem = exc.problems[0]
                raise InputError(
                    Problem(
                        problem.where,
                        f"{problem.what}; piml keeps this file, and it must be the project's key",
                        problem.fix
                        if "chmod" in problem.fix
                        else "move it away to have a new key made, or pass --ssh-key with the key the nodes trust",
                    )
                ) from None
    inventory = inventory_text(specs, user, key_ref, model, memory_gb)
    parse_inventory_text(inventory, "generated inventory", root / INVENTORY)  # never write what we cannot read

    created_root = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".piml-init-", dir=root))
    placed: list[tuple[Path, Path | None]] = []  # (target, backup of what was there)
    made_dirs: list[Path] = []
    try:
        files: dict[Path, tuple[bytes, int]] = {
            INVENTORY: (inventory.encode(), 0o644),
            CONFIG: (commented_defaults().encode(), 0o644),
        }
        if ssh_key is None and not key_file.exists():
            private, public = new_ed25519(f"piml@{root.resolve().name}")
            files[SSH_KEY] = (private, 0o600)
            files[SSH_KEY.with_name(SSH_KEY.name + ".pub")] = (public, 0o644)
        if not (root / ".gitignore").exists():
            files[Path(".gitignore")] = (
                b"# keys, secrets and state, and backups holding them: never commit them\n.piml/\nbackups/\n",
                0o644,
            )
        for rel, (data, mode) in files.items():
            staged = staging / rel
            staged.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(staged, mode)  # os.open's mode is masked by the umask
        if not (root / STATE_DIR).exists():
            made_dirs.append(root / STATE_DIR)
        make_private_dir(root / STATE_DIR)
        for rel in files:
            target = root / rel
            if not target.parent.exists():
                target.parent.mkdir(parents=True)
                made_dirs.append(target.parent)
            backup = None
            if target.exists():
                backup = free_backup_name(target)
                os.replace(target, backup)
            os.replace(staging / rel, target)
            placed.append((target, backup))
    except BaseException:
        for target, backup in reversed(placed):
            target.unlink(missing_ok=True)
            if backup:
                os.replace(backup, target)
        for directory in reversed(made_dirs):
            shutil.rmtree(directory, ignore_errors=True)
        if created_root:
            shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [target for target, _ in placed]


def free_backup_name(target: Path) -> Path:
    """NAME.bak, or NAME.bak.2, .3 ... when earlier backups are there: a second --force keeps the first one."""
    backup = target.with_name(target.name + ".bak")
    number = 1
    while backup.exists() or backup.is_symlink():
        number += 1
        backup = target.with_name(f"{target.name}.bak.{number}")
    return backup
