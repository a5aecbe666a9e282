"""Reading public certificates: the certificate ID AWS IoT gives them and the device's JSON CN."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID


class CertificateError(ValueError):
    """A certificate that cannot be used; the message says why."""


@dataclass(frozen=True)
class DeviceIdentity:
    device_id: str
    sku: str | None


def load_pem(pem: str) -> x509.Certificate:
    if "PRIVATE KEY" in pem:
        raise CertificateError("a private key was sent; the controller only takes public certificates")
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except ValueError as e:
        raise CertificateError(f"not a PEM certificate: {e}") from None


def certificate_id(pem: str) -> str:
    """AWS IoT's certificate ID: the SHA-256 of the DER encoding, so it is the same in every region."""
    der = load_pem(pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def device_identity(pem: str) -> DeviceIdentity:
    """Parse the JSON common name `{"id": "<device>", "sku": "<sku>"}` of a device certificate."""
    cert = load_pem(pem)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns:
        raise CertificateError("certificate has no common name")
    raw = cns[0].value if isinstance(cns[0].value, str) else cns[0].value.decode()
    try:
        cn = json.loads(raw)
    except json.JSONDecodeError:
        raise CertificateError(f'common name is not JSON {{"id": ..., "sku": ...}}: {raw[:80]!r}') from None
    if not isinstance(cn, dict) or not isinstance(cn.get("id"), str) or not cn["id"].strip():
        raise CertificateError(f"common name names no device id: {raw[:80]!r}")
    sku = cn.get("sku")
    return DeviceIdentity(device_id=cn["id"], sku=str(sku) if sku is not None else None)
