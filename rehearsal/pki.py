"""The customer's CA and device certificates for the local stack and the tests.

Private keys exist only here, under the git-ignored state folder: the controller itself only ever
handles public certificates (DESIGN.md, invariant 5).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_SUBJECT = [
    x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "IoT Failover Demo"),
    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "IoT"),
]


@dataclass
class LocalCA:
    cert_pem: str
    key: ec.EllipticCurvePrivateKey

    @property
    def cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem.encode())


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issued_by(ca: LocalCA) -> x509.AuthorityKeyIdentifier:
    """Which key signed a certificate. CAs of one name are told apart by it: every CA made here is
    "RegisteredCA", and a verifier that picks an issuer by name alone (OpenSSL) picks the wrong one
    once a region holds two (a rotation, or a registry reset and a new CA) and fails the signature."""
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())


def create_ca(common_name: str = "RegisteredCA") -> LocalCA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([*_SUBJECT, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return LocalCA(cert.public_bytes(serialization.Encoding.PEM).decode(), key)


def load_or_create_ca(folder: Path) -> LocalCA:
    """The local stack's CA, kept in `folder` (ca.pem public, ca.key private, never sent anywhere)."""
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / "ca.pem", folder / "ca.key"
    if cert_file.exists() and key_file.exists():
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return LocalCA(cert_file.read_text(), key)
    ca = create_ca()
    key_file.write_bytes(_pem(ca.key))
    key_file.chmod(0o600)
    cert_file.write_text(ca.cert_pem)
    return ca


def issue_device_cert(
    ca: LocalCA, device_id: str, sku: str = "2563x01189", cn: str | None = None
) -> tuple[str, str]:
    """A device certificate with the seed talk's JSON common name; returns (cert_pem, key_pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = cn if cn is not None else json.dumps({"id": device_id, "sku": sku}, separators=(",", ":"))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([*_SUBJECT, x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(_issued_by(ca), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem(key).decode()


def issue_server_cert(root: LocalCA, hostnames: list[str]) -> tuple[str, str]:
    """A TLS server certificate from the local root (the rehearsal's stand-in for Amazon's), valid for
    `hostnames` (wildcards allowed) and 127.0.0.1; returns (cert_pem, key_pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([*_SUBJECT, x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])]))
        .issuer_name(root.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_issued_by(root), critical=False)
        .sign(root.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem(key).decode()
