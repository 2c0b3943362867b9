"""The certificates a k3s server makes for itself, made the same way for the test control plane.

As k3s: a server CA signs the apiserver's serving certificate, a client CA signs every client certificate
(admin in system:masters, the controller-manager, the scheduler, one per node in system:nodes), a request-header
CA signs the apiserver's auth-proxy client certificate (aggregation layer; the controller-manager and scheduler
read that CA for delegated authentication), and an RSA key signs service-account tokens.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_SANS_DNS = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
SERVER_SANS_IP = ("127.0.0.1", "::1", "10.43.0.1")  # 10.43.0.1: the kubernetes Service in k3s's service range


def _key():
    return ec.generate_private_key(ec.SECP256R1())  # k3s's certificates are ECDSA P-256 too


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.rename(path)


def _pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )


def _cert(
    subject: x509.Name, key, issuer_cert, issuer_key, *, ca=False, server=False, client=False, dns=(), ips=()
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject if issuer_cert else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    b = b.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            key_encipherment=True,
            key_cert_sign=ca,
            content_commitment=False,
            data_encipherment=False,
            key_agreement=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    if not ca:
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if dns or ips:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            ),
            critical=False,
        )
    return b.sign(issuer_key or key, hashes.SHA256())


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = ([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []) + [
        x509.NameAttribute(NameOID.COMMON_NAME, cn)
    ]
    return x509.Name(attrs)


def make_all(tls: Path, node_names: list[str]) -> dict[str, Path]:
    """Write every certificate and key under `tls`; return the paths by role."""
    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(tls, 0o700)
    stamp = int(dt.datetime.now().timestamp())
    paths: dict[str, Path] = {}

    cas = {}
    for ca in ("server-ca", "client-ca", "request-header-ca"):
        key = _key()
        cert = _cert(_name(f"piml-test-{ca}@{stamp}"), key, None, None, ca=True)
        _write(tls / f"{ca}.crt", cert.public_bytes(serialization.Encoding.PEM))
        _write(tls / f"{ca}.key", _pem_key(key), 0o600)
        cas[ca] = (cert, key)
        paths[ca] = tls / f"{ca}.crt"
        paths[ca + "-key"] = tls / f"{ca}.key"

    def leaf(name: str, subject: x509.Name, ca: str, **kw) -> None:
        key = _key()
        cert = _cert(subject, key, *cas[ca], **kw)
        _write(tls / f"{name}.crt", cert.public_bytes(serialization.Encoding.PEM))
        _write(tls / f"{name}.key", _pem_key(key), 0o600)
        paths[name] = tls / f"{name}.crt"
        paths[name + "-key"] = tls / f"{name}.key"

    leaf(
        "serving-kube-apiserver",
        _name("kube-apiserver"),
        "server-ca",
        server=True,
        dns=SERVER_SANS_DNS,
        ips=SERVER_SANS_IP,
    )
    leaf("client-auth-proxy", _name("system:auth-proxy"), "request-header-ca", client=True)
    leaf("client-admin", _name("system:admin", "system:masters"), "client-ca", client=True)
    leaf("client-controller", _name("system:kube-controller-manager"), "client-ca", client=True)
    leaf("client-scheduler", _name("system:kube-scheduler"), "client-ca", client=True)
    leaf("client-kube-apiserver", _name("system:kube-apiserver", "system:masters"), "client-ca", client=True)
    for i, n in enumerate(node_names, 1):
        leaf(f"client-node-{n}", _name(f"system:node:{n}", "system:nodes"), "client-ca", client=True)
        # The kubelet's serving certificate, signed by the server CA as k3s signs it, for the node's
        # InternalIP (nodes.py: 127.0.0.{100 + i}) and name.
        leaf(f"serving-kubelet-{n}", _name(n), "server-ca", server=True, dns=(n,), ips=(f"127.0.0.{100 + i}",))

    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # k3s's service.key is RSA 2048
    _write(tls / "service.key", _pem_key(sa), 0o600)
    _write(
        tls / "service.pub",
        sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    paths["service-key"] = tls / "service.key"
    paths["service-pub"] = tls / "service.pub"
    return paths
