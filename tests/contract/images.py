"""The images the platform runs, installed here the way each image installs its program.

No container image can be downloaded on these machines, so each image is mirrored by what its Dockerfile does:
the same Python minor version (from pyenv), the same packages at the pinned versions, the same entrypoint.
Each mirror is a virtualenv built once and cached under /var/cache/piml-contract (PIML_CONTRACT_CACHE); its key
holds the spec, so a changed pin builds a new one. What each mirror follows upstream is written next to it
(see also README.md); where this machine lacks the exact version, `Mirror.note` says what stands in.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

CACHE = Path(os.environ.get("PIML_CONTRACT_CACHE", "/var/cache/piml-contract"))
NOTES: set[str] = set()  # what differs from the real images, printed in pytest's summary (conftest.py)
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"


@dataclass(frozen=True)
class Mirror:
    """One image as it runs here: a PATH to put first, an entrypoint, and what differs from the real image."""

    image: str
    bin: Path | None  # the virtualenv's bin/, None for programs from Debian packages
    entrypoint: tuple[str, ...] = ()  # the image's ENTRYPOINT
    cmd: tuple[str, ...] = ()  # its CMD (replaced by a container's args)
    env: dict[str, str] = field(default_factory=dict)
    home: str = "/root"
    workdir: str = "/"
    private_dirs: tuple[str, ...] = ()  # directories the image has of its own (an empty one per container here)
    note: str = ""  # what differs from the real image, said in the test output

    def path(self) -> str:
        extra = [str(self.bin)] if self.bin else []
        return ":".join([*extra, "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])


def python(minor: str) -> Path:
    """The newest pyenv Python of that minor version (the images pin a minor version, not a patch)."""
    found = sorted(PYENV.glob(f"{minor}.*"), key=lambda p: [int(x) for x in p.name.split(".") if x.isdigit()])
    candidates = [p / "bin" / "python" for p in found if (p / "bin" / "python").exists()]
    if not candidates:
        raise RuntimeError(f"no Python {minor} under {PYENV}: the image runs {minor}; install it with pyenv")
    return candidates[-1]


def venv(name: str, minor: str, packages: list[str]) -> Path:
    """A cached virtualenv with exactly `packages` (pip-style specs), built with uv when it is there."""
    key = hashlib.sha256(json.dumps([minor, packages]).encode()).hexdigest()[:12]
    home = CACHE / f"{name}-{key}"
    done = home / ".piml-complete"
    if done.exists():
        return home / "bin"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f".{name}-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder: scripts/test's background prewarm may be at it
        if not done.exists():
            _build_venv(home, minor, packages)
    return home / "bin"


def _build_venv(home: Path, minor: str, packages: list[str]) -> None:
    if home.exists():
        shutil.rmtree(home)
    base = python(minor)
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    if Path(uv).exists():
        subprocess.run([uv, "venv", "-q", "--seed", "--python", str(base), str(home)], check=True, timeout=300)
        install = [uv, "pip", "install", "-q", "--python", str(home / "bin" / "python")]
    else:
        subprocess.run([str(base), "-m", "venv", str(home)], check=True, timeout=300)
        install = [str(home / "bin" / "python"), "-m", "pip", "install", "-q", "--no-cache-dir"]
    result = subprocess.run([*install, *packages], capture_output=True, text=True, timeout=1800)
    if result.returncode:
        shutil.rmtree(home, ignore_errors=True)
        raise NotInstallable(f"installing {packages} for {home.name} failed:\n{result.stderr[-2000:]}")
    (home / ".piml-complete").write_text(json.dumps(packages))


class NotInstallable(RuntimeError):
    pass


def pinned_venv(
    name: str, minor: str, package: str, version: str, extras: tuple[str, ...] = (), also: tuple[str, ...] = ()
) -> tuple[Path, str]:
    """`package==version` (plus `also`); where this machine's registry cannot install that version, the newest
    one below it that installs. Returns (bin, the version installed)."""
    spec = f"{package}[{','.join(extras)}]" if extras else package
    try:
        return venv(name, minor, [f"{spec}=={version}", *also]), version
    except NotInstallable as first:
        listing = subprocess.run(
            [sys.executable, "-m", "pip", "index", "versions", package], capture_output=True, text=True, timeout=120
        ).stdout
        line = next((text for text in listing.splitlines() if text.startswith("Available versions:")), "")
        wanted = _numbers(version)
        below = [v.strip() for v in line.split(":", 1)[-1].split(",") if v.strip() and _numbers(v.strip()) < wanted]
        for candidate in below[:3]:
            try:
                return venv(name, minor, [f"{spec}=={candidate}", *also]), candidate
            except NotInstallable:
                continue
        raise first


def _numbers(version: str) -> tuple[int, ...]:
    return tuple(int(x) if x.isdigit() else -1 for x in version.split("."))


def _differs(package: str, pinned: str, installed: str) -> str:
    return "" if pinned == installed else f"{package} {installed} (the registry here cannot install {pinned})"


# --- the mirrors -------------------------------------------------------------------------------------------
# Each function reads the image name piml rendered, so the pin is piml's own (piml/render/images.py).


def mlflow(image: str) -> Mirror:
    """ghcr.io/mlflow/mlflow:vX (mlflow/mlflow docker/Dockerfile): FROM python:3.11-slim-trixie,
    `pip install --no-cache mlflow==X`, no extras; root, no WORKDIR, no ENTRYPOINT (CMD python3)."""
    version = image.rsplit(":v", 1)[1]
    bin, installed = pinned_venv("mlflow", "3.11", "mlflow", version)
    return Mirror(image, bin, cmd=("python3",), note=_differs("mlflow", version, installed))


def dask(image: str) -> Mirror:
    """ghcr.io/dask/dask:X (dask/dask-docker base/Dockerfile): miniforge3, `mamba install python=P dask=X cachey
    streamz` (P is 3.10 for the tag without -pyP.Q), ENTRYPOINT tini -g -- /usr/bin/prepare.sh, root.
    prepare.sh installs $EXTRA_PIP_PACKAGES (and conda/apt extras) with pip, then execs its arguments:
    mirrored by the few lines of shell in DASK_PREPARE. conda-forge's dask = dask-core + distributed + bokeh..."""
    tag = image.rsplit(":", 1)[1]
    version, _, py = tag.partition("-py")
    minor = py or "3.10"
    bin, installed = pinned_venv("dask", minor, "dask", version, ("complete",), ("cachey", "streamz"))
    return Mirror(
        image,
        bin,
        entrypoint=("sh", "-ec", DASK_PREPARE, "prepare.sh"),
        note=f"pip instead of conda-forge, Python {minor} " + _differs("dask", version, installed),
    )


DASK_PREPARE = 'if [ -n "$EXTRA_PIP_PACKAGES" ]; then pip install $EXTRA_PIP_PACKAGES; fi; exec "$@"'


def ray(image: str, extra: tuple[str, ...] = ()) -> Mirror:
    """rayproject/ray:X-pyPQ[-aarch64] (ray-project/ray docker/base-deps, docker/ray): Ubuntu with a conda Python
    P.Q in /home/ray/anaconda3, user ray (uid 1000), `pip install ray[all]==X`; no ENTRYPOINT (bash)."""
    tag = image.rsplit(":", 1)[1]
    version = tag.split("-")[0]
    py = next(part for part in tag.split("-") if part.startswith("py"))[2:]
    minor = f"{py[0]}.{py[1:]}"
    bin, installed = pinned_venv("ray", minor, "ray", version, ("default", "serve"), extra)
    added = f" plus {', '.join(extra)} (a user's Ray image, for ray.check_pip: [] or serve.pip: [])" if extra else ""
    return Mirror(
        image,
        bin,
        note=f"ray[default,serve]{added} (the image has ray[all]); runs as root, not uid 1000 "
        + _differs("ray", version, installed),
    )


def redis(image: str) -> Mirror:
    """redis:X (docker-library/redis debian): ENTRYPOINT docker-entrypoint.sh (prepends redis-server to args that
    start with '-', drops to the redis user), CMD redis-server, WORKDIR /data. Debian's redis-server stands in."""
    found = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=30).stdout.split()
    here = next((w.split("=")[1] for w in found if w.startswith("v=")), "?")
    return Mirror(
        image, None, cmd=("redis-server",), workdir="/data", note=f"Debian's redis-server {here} stands in for {image}"
    )


def rabbitmq(image: str) -> Mirror:
    """rabbitmq:X-management (docker-library/rabbitmq 3.13/ubuntu, management/): ENTRYPOINT docker-entrypoint.sh
    (drops to the rabbitmq user, refuses deprecated RABBITMQ_* variables), CMD rabbitmq-server, HOME and data in
    /var/lib/rabbitmq, conf.d/10-defaults.conf (loopback_users.guest = false, log.console = true), plugins
    rabbitmq_prometheus and rabbitmq_management enabled. The server itself reads RABBITMQ_DEFAULT_USER/PASS.
    Debian's rabbitmq-server stands in, with the image's config files (written under the cache, not /etc)."""
    etc = CACHE / "rabbitmq-image-etc"
    (etc / "conf.d").mkdir(parents=True, exist_ok=True)
    (etc / "conf.d" / "10-defaults.conf").write_text("loopback_users.guest = false\nlog.console = true\n")
    (etc / "enabled_plugins").write_text("[rabbitmq_management,rabbitmq_prometheus].\n")
    found = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"], capture_output=True, text=True, timeout=30
    )
    here = found.stdout.split("-")[0] or "?"
    env = {
        "RABBITMQ_CONFIG_FILES": str(etc / "conf.d"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(etc / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": "/var/lib/rabbitmq/mnesia",
        "RABBITMQ_LOG_BASE": "/var/lib/rabbitmq/log",
    }
    return Mirror(
        image,
        Path("/usr/lib/rabbitmq/bin"),
        cmd=("rabbitmq-server",),
        env=env,
        home="/var/lib/rabbitmq",
        note=f"Debian's rabbitmq-server {here} stands in for {image}",
    )


def postgres(image: str) -> Mirror:
    """postgres:X (docker-library/postgres X/bookworm): ENTRYPOINT docker-entrypoint.sh, CMD postgres, PGDATA from
    the env. On an empty PGDATA the entrypoint runs initdb as the postgres user with POSTGRES_USER as superuser and
    POSTGRES_PASSWORD, `listen_addresses = '*'`, `host all all all scram-sha-256` (POSTGRES_HOST_AUTH_METHOD's
    default), creates POSTGRES_DB, then execs postgres as the postgres user (gosu). The image sets LANG en_US.utf8,
    so its databases are UTF8 (C.UTF-8 here: same encoding). Debian's PostgreSQL stands in;
    POSTGRES_ENTRYPOINT does those steps (the image's own script is not copied)."""
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not bindir:
        raise RuntimeError("PostgreSQL is not installed: run tests/contract/install-deps.sh as root")
    here = bindir[-1].parent.name
    return Mirror(
        image,
        bindir[-1],
        entrypoint=("sh", "-ec", POSTGRES_ENTRYPOINT, "docker-entrypoint.sh"),
        cmd=("postgres",),
        private_dirs=("/var/run/postgresql",),
        note=f"Debian's PostgreSQL {here} stands in for {image}",
    )


POSTGRES_ENTRYPOINT = r"""
if [ "$1" != postgres ]; then exec "$@"; fi
mkdir -p "$PGDATA"; chown -R postgres "$PGDATA" /var/run/postgresql; chmod 700 "$PGDATA"
as_pg() { runuser -u postgres -- "$@"; }
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pwfile=$(mktemp); printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"; chown postgres "$pwfile"
    as_pg initdb -D "$PGDATA" --username="${POSTGRES_USER:-postgres}" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    as_pg pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    db="${POSTGRES_DB:-${POSTGRES_USER:-postgres}}"
    if [ "$db" != postgres ]; then
        as_pg psql -v ON_ERROR_STOP=1 -U "${POSTGRES_USER:-postgres}" -d postgres -c "CREATE DATABASE "$db"" >/dev/null
    fi
    as_pg pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec runuser -u postgres -- "$@"
"""


# Not an image: a stand-in for MinIO, which cannot be had here (no release binary, no Debian package, the Go
# proxy serves no version of github.com/minio/minio). moto's S3 server answers the S3 calls MLflow makes; it
# checks no credentials and has no MinIO health endpoints or `mc`.
S3_STANDIN = "standin:moto-s3-server"


def s3_standin() -> Mirror:
    return Mirror(
        S3_STANDIN,
        venv("moto", "3.11", ["moto[server]==5.2.5"]),
        note="moto's S3 server stands in for MinIO (MinIO itself cannot be had here)",
    )


def for_images(images: set[str], ray_extra: tuple[str, ...] = ()) -> dict[str, Mirror]:
    makers = {
        "ghcr.io/mlflow/mlflow": mlflow,
        "ghcr.io/dask/dask": dask,
        "rayproject/ray": ray,
        "redis": redis,
        "rabbitmq": rabbitmq,
        "postgres": postgres,
    }
    found = {S3_STANDIN: s3_standin()} if any(image.startswith("minio/minio:") for image in images) else {}
    for image in images:
        repo = image.rsplit(":", 1)[0]
        if repo == "rayproject/ray" and ray_extra:
            found[image] = ray(image, ray_extra)
        elif repo in makers:
            found[image] = makers[repo](image)
    NOTES.update(f"{image}: {m.note}" for image, m in found.items() if m.note)
    return found
