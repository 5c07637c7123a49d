"""The controller's own certificate authority (IKE case, certificate authentication).

The CA key and self-signed certificate are created on first use in `<state_dir>/ca/`; every
NSF and road warrior gets an ECDSA P-256 key and a certificate naming its IKE identity (IP
address or FQDN as subject alternative name, because strongSwan matches identities against
SANs). Files holding keys are created 0600 before anything is written to them, so a key is
never readable by others, not even for an instant.

Rotation: `rotate()` keeps the previous CA certificate as `previous.crt`; both are handed to
the NSFs as trust anchors, so certificates of either generation verify while they are being
replaced. `reissue(kind, name)` replaces one holder's key and certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

CA_DAYS = 3650
CERT_DAYS = 365
_IKE_EKU = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.17")  # id-kp-ipsecIKE (RFC 4945)


def write_private(path: Path, data: bytes) -> None:
    """Write `data` to a file that is 0600 from its creation on (atomic rename)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def identity_san(identity: str) -> x509.GeneralName:
    """An IKE identity (IP address or FQDN) as the SAN strongSwan matches it against."""
    try:
        return x509.IPAddress(ipaddress.ip_address(identity))
    except ValueError:
        return x509.DNSName(identity)


def cert_has_identity(cert: x509.Certificate, identity: str) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    want = identity_san(identity)
    if isinstance(want, x509.IPAddress):
        return want.value in san.get_values_for_type(x509.IPAddress)
    return identity.lower() in (d.lower() for d in san.get_values_for_type(x509.DNSName))


@dataclass(frozen=True)
class Credential:
    """A holder's key (PEM) and certificate; the key never appears in repr or logs."""

    key_pem: bytes
    cert: x509.Certificate

    def __repr__(self) -> str:
        return f"Credential(subject={self.cert.subject.rfc4514_string()!r})"

    @property
    def key_der(self) -> bytes:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


class ControllerCA:
    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "ca"
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._cert: x509.Certificate | None = None

    # ---- the CA itself ----------------------------------------------------------------------

    @property
    def key_path(self) -> Path:
        return self.dir / "ca.key"

    @property
    def cert_path(self) -> Path:
        return self.dir / "ca.crt"

    def exists(self) -> bool:
        return self.key_path.exists() and self.cert_path.exists()

    def _create(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "i2nsf-sdn"),
                          x509.NameAttribute(NameOID.COMMON_NAME,
                                             f"i2nsf controller CA {now:%Y%m%d%H%M%S%f}")])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        write_private(self.key_path, _pem_key(key))
        write_private(self.cert_path, cert.public_bytes(serialization.Encoding.PEM))
        self._key, self._cert = key, cert
        log.info("CA created: %s (serial %x)", cert.subject.rfc4514_string(),
                 cert.serial_number)

    def _load(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if self._key is None or self._cert is None:
            if not self.exists():
                self._create()
            else:
                key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
                assert isinstance(key, ec.EllipticCurvePrivateKey)
                self._key = key
                self._cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        assert self._key is not None and self._cert is not None
        return self._key, self._cert

    @property
    def certificate(self) -> x509.Certificate:
        return self._load()[1]

    def trust_anchors(self) -> list[x509.Certificate]:
        """The current CA certificate and, after a rotation, the previous one."""
        out = [self.certificate]
        prev = self.dir / "previous.crt"
        if prev.exists():
            out.append(x509.load_pem_x509_certificate(prev.read_bytes()))
        return out

    def rotate(self) -> x509.Certificate:
        """A new CA key and certificate; the old certificate stays a trust anchor."""
        _, old = self._load()
        write_private(self.dir / "previous.crt", old.public_bytes(serialization.Encoding.PEM))
        self._key = self._cert = None
        self._create()
        return self.certificate

    def issued(self, cert: x509.Certificate) -> bool:
        """Whether `cert` was signed by one of our trust anchors."""
        for ca in self.trust_anchors():
            if cert.issuer != ca.subject:
                continue
            pub = ca.public_key()
            assert isinstance(pub, ec.EllipticCurvePublicKey)
            try:
                pub.verify(cert.signature, cert.tbs_certificate_bytes,
                           ec.ECDSA(cert.signature_hash_algorithm))  # type: ignore[arg-type]
                return True
            except InvalidSignature:
                continue
        return False

    # ---- holders (NSFs, road warriors) ------------------------------------------------------

    def _holder(self, kind: str, name: str) -> tuple[Path, Path]:
        d = self.dir / kind
        return d / f"{name}.key", d / f"{name}.crt"

    def issue(self, cn: str, identity: str) -> Credential:
        ca_key, ca_cert = self._load()
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "i2nsf-sdn"),
                    x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
                .add_extension(x509.SubjectAlternativeName([identity_san(identity)]),
                               critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH,
                                                      _IKE_EKU]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        return Credential(_pem_key(key), cert)

    def credential(self, kind: str, name: str, identity: str) -> Credential:
        """The holder's stored credential; issued anew when missing, when it does not
        carry `identity` any more, or when it is not from a current trust anchor."""
        kpath, cpath = self._holder(kind, name)
        if kpath.exists() and cpath.exists():
            cert = x509.load_pem_x509_certificate(cpath.read_bytes())
            if cert_has_identity(cert, identity) and self.issued(cert):
                return Credential(kpath.read_bytes(), cert)
        return self.reissue(kind, name, identity)

    def reissue(self, kind: str, name: str, identity: str) -> Credential:
        cred = self.issue(f"{kind}:{name}", identity)
        kpath, cpath = self._holder(kind, name)
        write_private(kpath, cred.key_pem)
        write_private(cpath, cred.cert_pem)
        log.info("certificate issued to %s %s for identity %s (serial %x)", kind, name,
                 identity, cred.cert.serial_number)
        return cred

    def holders(self, kind: str) -> list[str]:
        d = self.dir / kind
        return sorted(p.stem for p in d.glob("*.crt")) if d.exists() else []


def load_credential_files(cert_file: str, key_file: str) -> Credential:
    """An operator-supplied certificate and key (PEM); ValueError when unreadable or when
    the key does not belong to the certificate."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read certificate {cert_file}: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot read private key {key_file}") from exc
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        raise ValueError(f"private key {key_file} does not belong to {cert_file}")
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return Credential(pem, cert)
