"""Reading public certificates: the certificate ID AWS IoT gives them and the device's JSON CN."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID


class CertificateError(ValueError):
    """A certificate that cannot be used; the message says why."""


# The device id becomes the thing's name and the sku one of its attributes (AWS IoT's own patterns),
# so a NUL, a path, surrounding spaces or a bidi character is refused here, not by AWS mid-onboarding.
THING_NAME = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
_ATTRIBUTE_VALUE = re.compile(r"[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}")


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
    value = cns[0].value
    raw = value if isinstance(value, str) else value.decode(errors="replace")
    try:
        cn = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, a 5,000-digit number, or nested too deeply
        raise CertificateError(f'common name is not JSON {{"id": ..., "sku": ...}}: {raw[:80]!r}') from None
    device = cn.get("id") if isinstance(cn, dict) else None
    if not isinstance(device, str) or not THING_NAME.fullmatch(device):
        raise CertificateError(
            f"common name names no valid device id (1-128 of a-z A-Z 0-9 : _ -): {raw[:80]!r}"
        )
    sku = cn.get("sku")
    if isinstance(sku, int) and not isinstance(sku, bool):
        sku = str(sku)  # a numeric SKU, as before
    if sku is not None and not (isinstance(sku, str) and _ATTRIBUTE_VALUE.fullmatch(sku)):
        raise CertificateError(f"common name's sku is not a valid thing attribute value: {raw[:80]!r}")
    return DeviceIdentity(device_id=device, sku=sku)
