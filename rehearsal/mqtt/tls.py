"""The broker's TLS: a server certificate from the local root, and client chains checked against the
region's registry.

IoT Core accepts a client certificate when it chains to a CA registered in the region, or when the
certificate itself is registered there (without a CA). OpenSSL can only check chains against a trust
store, so the store holds every CA and every certificate ever registered in the region (as partial
chain anchors) and is topped up at the start of each handshake (the SNI callback runs before the
client's certificate is checked). The store only grows: whether a CA or certificate is still
registered and ACTIVE is decided afterwards, against the registry, by the auth plugin.
"""

from __future__ import annotations

import contextlib
import ssl
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rehearsal import pki

ALPN = ["x-amzn-mqtt-ca", "mqtt"]  # what IoT Core negotiates on 443; 8883 needs none


def server_hostnames(region: str) -> list[str]:
    """Every ATS endpoint name of the region (`<prefix>-ats.iot.<region>.amazonaws.com`), and localhost."""
    return [f"*.iot.{region}.amazonaws.com", "localhost"]


class TrustStore:
    """Tops up an SSL context with the CAs and certificates registered since the last handshake."""

    def __init__(self, registered: Callable[[], list[tuple[str, str]]]):
        self.registered = registered  # [(certificate id, PEM)] of every CA and certificate of the region
        self.added: set[str] = set()

    def refresh(self, ctx: ssl.SSLContext) -> None:
        for cert_id, pem in self.registered():
            if cert_id not in self.added:
                with contextlib.suppress(ssl.SSLError):  # unparsable PEM: never trusted, as in IoT Core
                    ctx.load_verify_locations(cadata=pem)
                self.added.add(cert_id)

    def sni_callback(self, _sslobj: Any, _server_name: str | None, ctx: ssl.SSLContext) -> None:
        self.refresh(ctx)


def server_context(region: str, root: pki.LocalCA, trust: TrustStore) -> ssl.SSLContext:
    """TLS 1.2+, a client certificate required, chains checked against `trust`."""
    cert, key = pki.issue_server_cert(root, server_hostnames(region))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix=f"mqtt-{region}-") as tmp:  # ssl loads keys from files only
        folder = Path(tmp)
        (folder / "server.pem").write_text(cert)
        (folder / "server.key").write_text(key)
        ctx.load_cert_chain(folder / "server.pem", folder / "server.key")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.set_alpn_protocols(ALPN)
    ctx.sni_callback = trust.sni_callback
    return ctx
