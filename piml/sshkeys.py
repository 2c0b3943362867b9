"""The project's SSH key pair: made once by `piml init`, or an existing key the user names."""

from __future__ import annotations

import stat
from pathlib import Path

from piml.errors import InputError, Problem

MAX_KEY_BYTES = 64 * 1024  # an RSA-16384 key is under 13 KB


def new_ed25519(comment: str) -> tuple[bytes, bytes]:
    """A fresh ed25519 key pair: (private key in OpenSSH format, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + f" {comment}\n".encode()


def public_key_of(path: Path, where: str | None = None) -> bytes:
    """The public key line for an existing private key: derived from the key, or read from PATH.pub when the
    key has a passphrase.

    Raises InputError naming `where` (default `--ssh-key PATH`) when the file is not a usable private key,
    or when others may read it (ssh refuses such a key: "UNPROTECTED PRIVATE KEY FILE").
    """
    path = Path(path).expanduser()
    where = where or f"--ssh-key {path}"
    try:
        status = path.stat()
        if not stat.S_ISREG(status.st_mode) or status.st_size > MAX_KEY_BYTES:  # /dev/zero, a FIFO, a disk image
            raise InputError(
                Problem(where, "not a private key (not a small regular file)", "name the private key file")
            )
        raw, mode = path.read_bytes(), status.st_mode
    except FileNotFoundError:
        raise InputError(
            Problem(where, "no such file", "name an existing private key, or leave --ssh-key out to make one")
        ) from None
    except OSError as exc:
        raise InputError(Problem(where, f"cannot read it: {exc.strerror}", "check the file's permissions")) from None
    pub = path.with_name(path.name + ".pub")
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    key, encrypted = None, False
    for load in (serialization.load_ssh_private_key, serialization.load_pem_private_key):  # OpenSSH, then PEM (RSA, EC)
        try:
            key = load(raw, password=None)
            break
        except TypeError:  # it is a key, with a passphrase: only its .pub can tell the public key
            encrypted = True
            break
        except (ValueError, UnsupportedAlgorithm):
            continue
    if key is None and not encrypted:
        raise InputError(Problem(where, "not a private key", "name the private key file (not the .pub)"))
    if mode & 0o077:
        raise InputError(
            Problem(
                where,
                f"others may read this private key (mode {mode & 0o777:04o}); ssh refuses such a key",
                f"chmod 600 {path}",
            )
        )
    if key is not None:
        return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    line = pub.read_bytes().strip() if pub.is_file() else b""
    if not line.startswith((b"ssh-", b"ecdsa-")):
        raise InputError(
            Problem(
                where,
                "the key has a passphrase and no .pub file beside it",
                f"create {pub.name} with `ssh-keygen -y -f {path} > {pub}`",
            )
        )
    return line + b"\n"
