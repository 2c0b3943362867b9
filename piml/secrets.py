"""Platform secrets: generated once, kept in .piml/secrets.yaml (0600), never printed or logged.

They reach the cluster only as Kubernetes Secrets; rendered files carry them only when the user
asks (`piml render --include-secrets`).

Some are the user's own and never generated (USER_GIVEN: an external database's password, external S3
keys): piml reads each from its environment variable, else from the same .piml/secrets.yaml, where the
user adds it (`mlflow_backend_password: ...`). piml.yaml only says where those stores are.
"""

from __future__ import annotations

import os
import secrets as _random
from pathlib import Path

import yaml

from piml.fsutil import make_private_dir, write_atomic

NAMES = (
    "mlflow_admin_password",
    "mlflow_flask_secret_key",
    "redis_password",
    "postgres_password",
    "minio_access_key",
    "minio_secret_key",
    "rabbitmq_password",
    "ray_auth_token",
    "serve_token",
)
# The user's own secrets (name in secrets.yaml -> environment variable that overrides it); piml makes none of them.
USER_GIVEN = {
    "mlflow_backend_password": "PIML_MLFLOW_BACKEND_PASSWORD",
    "mlflow_s3_access_key": "PIML_MLFLOW_S3_ACCESS_KEY",
    "mlflow_s3_secret_key": "PIML_MLFLOW_S3_SECRET_KEY",
    "backup_s3_access_key": "PIML_BACKUP_S3_ACCESS_KEY",
    "backup_s3_secret_key": "PIML_BACKUP_S3_SECRET_KEY",
}


SECRETS_FILE = "secrets.yaml"  # in the project's .piml/ (piml.project.ProjectPaths.secrets)


def load_existing(state_dir: Path) -> dict[str, str]:
    """The project's secrets as they are, creating nothing (for commands that only read: an unknown directory
    gets no .piml/)."""
    path = Path(state_dir) / SECRETS_FILE
    current = yaml.safe_load(path.read_text()) if path.is_file() else {}
    return {str(k): str(v) for k, v in current.items() if v not in (None, "")} if isinstance(current, dict) else {}


def load_or_create(state_dir: Path) -> dict[str, str]:
    """The project's secrets, creating any that are missing (existing ones are never changed), and the
    user-given ones that are set (environment first)."""
    path = Path(state_dir) / SECRETS_FILE
    current = yaml.safe_load(path.read_text()) if path.exists() else {}
    current = current if isinstance(current, dict) else {}
    missing = [n for n in NAMES if not current.get(n)]
    if missing:
        for name in missing:
            current[name] = _random.token_urlsafe(24) if name != "minio_access_key" else "piml" + _random.token_hex(8)
        make_private_dir(path.parent)
        write_atomic(path, yaml.safe_dump(current, sort_keys=True), mode=0o600)
    return {**{n: str(current[n]) for n in NAMES}, **_user_given(current)}


def user_given(state_dir: Path) -> dict[str, str]:
    """The user's own secrets that are set (environment first), creating nothing."""
    return _user_given(load_existing(state_dir))


def require_s3_keys(secrets: dict[str, str], section: str, why: str, where: str) -> None:
    """The user's own S3 keys for `section` (SECTION_s3_access_key, SECTION_s3_secret_key) are in `secrets`, or one
    line saying where to put them."""
    from piml.errors import InputError, Problem

    missing = [n for n in (f"{section}_s3_access_key", f"{section}_s3_secret_key") if not secrets.get(n)]
    if missing:
        raise InputError(
            Problem(
                where,
                f"{why}, but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not given",
                f"add {', '.join(f'{n}: ...' for n in missing)} to {where} (or set "
                f"{', '.join('$' + USER_GIVEN[n] for n in missing)}): your S3 store's keys",
            )
        )


def _user_given(current: dict) -> dict[str, str]:
    found = {}
    for name, variable in USER_GIVEN.items():
        value = os.environ.get(variable) or current.get(name)
        if value not in (None, ""):
            found[name] = str(value)
    return found
