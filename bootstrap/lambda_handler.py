"""The bootstrap service as a Lambda handler behind API Gateway with mutual TLS.

API Gateway checks the device certificate against the customer CA (its truststore) before the
handler runs; the handler then only lets a device ask for its own thing: the certificate's JSON
common name `{"id": ...}` must name the thing requested. Both event formats are read: REST APIs
(payload 1.0: `path`, `requestContext.identity.clientCert`) and HTTP APIs (2.0: `rawPath`,
`requestContext.authentication.clientCert`). Environment: IOTFAILOVER_CONFIG (path of the
deployment config bundled with the function), IOTFAILOVER_CACHE_SECONDS, IOTFAILOVER_IOT_ENDPOINTS
(optional, else each region's `iot_endpoint` in the config) and AWS_REGION (set by Lambda). The
service and its cache live as long as the warm execution environment. The package holds this module's
imports only (deploy/aws/bootstrap-requirements.txt): no temporalio.
"""

from __future__ import annotations

import os
from typing import Any

from bootstrap.runtime import endpoints_from_env
from bootstrap.service import REQUESTS, Answer, BootstrapService
from core import logs
from core.certs import CertificateError, device_identity
from core.config import CONFIG_ENV, ConfigError, load_config
from core.metrics import BAD_INPUT

_service: BootstrapService | None = None


def service() -> BootstrapService:
    global _service
    if _service is None:
        logs.configure()
        try:
            cfg = load_config(os.environ.get(CONFIG_ENV, "deployment.toml"))
            ttl = float(os.environ.get("IOTFAILOVER_CACHE_SECONDS", "5"))
            _service = BootstrapService(cfg, os.environ["AWS_REGION"], ttl, endpoints=endpoints_from_env())
        except ConfigError as e:
            logs.get("bootstrap").error("bootstrap function misconfigured", problems=e.problems)
            raise
    return _service


def _response(ans: Answer) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", **ans.headers}
    return {"statusCode": ans.status, "headers": headers, "body": ans.json()}


def _forbidden(svc: BootstrapService, reason: str, message: str) -> dict[str, Any]:
    BAD_INPUT.labels(source="bootstrap_request", reason=reason).inc()
    REQUESTS.labels(region=svc.region, status="403").inc()
    return _response(Answer(403, {"error": message}))


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    svc = service()
    path = event.get("rawPath") or event.get("path") or ""
    if path.rstrip("/") == "/healthz":
        ok, body = svc.health()
        return _response(Answer(200 if ok else 503, body))
    params = event.get("pathParameters") or {}
    thing = params.get("thingName") or params.get("thing") or path.rsplit("/", 1)[-1]
    context_ = event.get("requestContext") or {}
    tls = context_.get("authentication") or context_.get("identity") or {}
    cert = tls.get("clientCert")
    if cert:
        try:
            device = device_identity(cert.get("clientCertPem", "")).device_id
        except CertificateError as e:
            return _forbidden(svc, "client_cert", f"client certificate not usable: {e}")
        if device != thing:
            return _forbidden(
                svc, "other_device", f"certificate of device {device!r} cannot ask for {thing!r}"
            )
    return _response(svc.answer(thing))
