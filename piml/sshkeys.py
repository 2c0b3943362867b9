"""The project's SSH key pair: made once by `piml init`, or an existing key the user names."""

from __future__ import annotations

from pathlib import Path

from piml.errors import InputError, Problem


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


def public_key_of(path: Path) -> bytes:
    """The public key line for an existing private key: from PATH.pub, or derived from the key.

    Raises InputError naming `--ssh-key` when the file is not a usable private key.
    """
    path = Path(path).expanduser()
    where = f"--ssh-key {path}"
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InputError(Problem(where, "no such file", "name an existing private key, or leave --ssh-key out to make one")) from None
    except OSError as exc:
        raise InputError(Problem(where, f"cannot read it: {exc.strerror}", "check the file's permissions")) from None
    pub = path.with_name(path.name + ".pub")
    if pub.is_file():
        line = pub.read_bytes().strip()
        if line.startswith((b"ssh-", b"ecdsa-")):
            return line + b"\n"
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_ssh_private_key(raw, password=None)
    except TypeError:
        raise InputError(Problem(where, "the key has a passphrase and no .pub file beside it", f"create {pub.name} with `ssh-keygen -y -f {path} > {pub}`")) from None
    except (ValueError, UnsupportedAlgorithm):
        raise InputError(Problem(where, "not an OpenSSH private key", "name the private key file (not the .pub)")) from None
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
