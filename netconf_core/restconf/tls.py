"""TLS for RESTCONF (RFC 8040 requires HTTPS): a given certificate, or a self-signed one
generated once with `cryptography` and kept in the state directory (key mode 0600), so
clients can pin it across restarts."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def generate_self_signed(cert_path: Path, key_path: Path, names: list[str],
                         days: int = 825) -> None:
    """An ECDSA P-256 certificate for `names` (DNS names or IP addresses)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else
                                            "i2nsf-controller")])
    alt: list[x509.GeneralName] = []
    for n in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            alt.append(x509.DNSName(n))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    _write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def fingerprint(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return "SHA256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def server_context(cert_path: Path | None, key_path: Path | None, state_dir: Path,
                   names: list[str], client_ca: Path | None = None
                   ) -> tuple[ssl.SSLContext, Path]:
    """The TLS context; generates `restconf-tls.crt/.key` in `state_dir` when no
    certificate is configured. Returns the context and the certificate in use."""
    if cert_path is None:
        cert_path = state_dir / "restconf-tls.crt"
        key_path = state_dir / "restconf-tls.key"
        if not (cert_path.exists() and key_path.exists()):
            generate_self_signed(cert_path, key_path, names)
            log.info("generated a self-signed RESTCONF certificate %s (%s)", cert_path,
                     fingerprint(cert_path))
    elif key_path is None:
        raise ValueError("[restconf] certificate_file needs private_key_file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert_path), str(key_path))
    if client_ca is not None:
        # a client certificate is optional (basic auth stays possible) but, when sent, must
        # chain to this CA; its subject's common name is the user (RFC 7407 cert-to-name)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(str(client_ca))
    return ctx, cert_path


def cert_user(peercert: dict | None) -> str | None:  # type: ignore[type-arg]
    """The common name of a verified client certificate (None without one)."""
    if not peercert:
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
