"""The one per-region AWS client factory, and the one pager.

Every activity, the bootstrap service, the simulator and the starter get their boto3 clients here:
per region, assuming the region's role when one is configured (cross-account), with botocore's
standard retries of one call (its `adaptive` mode would be a second client-side rate limiter), a
connection pool sized for the worker's concurrency, the project's rate limiter (the one limiter)
and metrics hooked into every request, and the endpoint overridden for the local emulators. The
same code talks to AWS when the config names no endpoint override.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.session
from botocore.client import BaseClient
from botocore.config import Config
from botocore.credentials import DeferredRefreshableCredentials
from botocore.paginate import TokenDecoder, TokenEncoder

from core import metrics
from core.config import DeploymentConfig, RegionConfig
from core.errors import error_code, is_throttle, is_throttle_answer
from core.ratelimit import RateLimiter

SERVICES = ("iot", "iot-data", "iot-jobs-data", "dynamodb", "sqs", "route53", "sts")
_DATA_ENDPOINT_TYPES = {"iot-data": "iot:Data-ATS", "iot-jobs-data": "iot:Jobs"}
LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


class AwsClients:
    """boto3 clients per (region, service) for one deployment; thread-safe and cached."""

    def __init__(
        self,
        cfg: DeploymentConfig,
        max_pool_connections: int = 32,
        max_attempts: int = 3,
        read_timeout: float = 15,
        retry_mode: str = "standard",
    ):
        self.cfg = cfg
        self.limiter = RateLimiter(cfg.quotas.per_api, cfg.quotas.default_rps)
        self._botocore_config = Config(
            retries={"mode": retry_mode, "max_attempts": max_attempts},
            max_pool_connections=max_pool_connections,
            connect_timeout=3,
            read_timeout=read_timeout,
            tcp_keepalive=True,
        )
        self._sessions: dict[str, boto3.Session] = {}
        self._clients: dict[tuple[str, str], BaseClient] = {}
        self._lock = threading.RLock()

    def region(self, name: str) -> RegionConfig:
        try:
            return self.cfg.regions[name]
        except KeyError:
            raise KeyError(f"region {name!r} is not part of deployment {self.cfg.name!r}") from None

    def client(self, region: str, service: str) -> Any:
        key = (region, service)
        with self._lock:
            c = self._clients.get(key)
            if c is None:
                c = self._clients[key] = self._make_client(region, service)
            return c

    def iot(self, region: str) -> Any:
        return self.client(region, "iot")

    def iot_data(self, region: str) -> Any:
        return self.client(region, "iot-data")

    def jobs_data(self, region: str) -> Any:
        return self.client(region, "iot-jobs-data")

    def dynamodb(self, region: str) -> Any:
        return self.client(region, "dynamodb")

    def sqs(self, region: str) -> Any:
        return self.client(region, "sqs")

    def device_endpoint(self, region: str) -> str:
        """The MQTT endpoint devices connect to in `region` (host name, no scheme)."""
        rc = self.region(region)
        if rc.iot_endpoint:
            return rc.iot_endpoint
        return self.iot(region).describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]

    def _session(self, region: str) -> boto3.Session:
        with self._lock:
            s = self._sessions.get(region)
            if s is None:
                s = self._sessions[region] = self._make_session(region)
            return s

    def _make_session(self, region: str) -> boto3.Session:
        rc = self.region(region)
        base = boto3.Session(region_name=region, **(LOCAL_CREDENTIALS if rc.endpoint_url else {}))
        if not rc.role_arn:
            return base

        def assume() -> dict[str, str]:
            sts = base.client("sts", endpoint_url=rc.endpoint_url, config=self._botocore_config)
            kwargs = {"RoleArn": rc.role_arn, "RoleSessionName": f"iotfailover-{self.cfg.name}"[:64]}
            if rc.external_id:
                kwargs["ExternalId"] = rc.external_id
            creds = sts.assume_role(**kwargs)["Credentials"]
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": creds["Expiration"].isoformat(),
            }

        core = botocore.session.get_session()
        core._credentials = DeferredRefreshableCredentials(refresh_using=assume, method="sts-assume-role")
        core.set_config_variable("region", region)
        return boto3.Session(botocore_session=core, region_name=region)

    def _make_client(self, region: str, service: str) -> Any:
        rc = self.region(region)
        endpoint = rc.endpoint_url
        if endpoint is None and service in _DATA_ENDPOINT_TYPES:
            address = self.iot(region).describe_endpoint(endpointType=_DATA_ENDPOINT_TYPES[service])
            endpoint = f"https://{address['endpointAddress']}"
        client = self._session(region).client(service, endpoint_url=endpoint, config=self._botocore_config)
        _instrument(client, region, self.limiter)
        return client


def _instrument(client: BaseClient, region: str, limiter: RateLimiter) -> None:
    """Rate-limit every HTTP attempt and record its outcome, throttles included."""
    started: dict[int, float] = {}

    def before_send(request: Any, **kwargs: Any) -> None:
        api = kwargs["event_name"].rsplit(".", 1)[-1]
        limiter.acquire(region, api)
        started[threading.get_ident()] = time.perf_counter()

    def needs_retry(response: Any, operation: Any, caught_exception: Any = None, **kwargs: Any) -> None:
        api = operation.name
        t0 = started.pop(threading.get_ident(), None)
        if t0 is not None:
            metrics.AWS_LATENCY.labels(region=region, api=api).observe(time.perf_counter() - t0)
        if caught_exception is not None:
            outcome = "connection_error"
        else:
            status = response[0].status_code
            code = (response[1] or {}).get("Error", {}).get("Code", "")
            if is_throttle_answer(status, code):
                limiter.throttled(region, api)
                outcome = "throttled"
            else:
                outcome = "ok" if status < 400 else f"http_{status // 100}xx"
        metrics.AWS_CALLS.labels(region=region, api=api, outcome=outcome).inc()

    client.meta.events.register("before-send", before_send)
    client.meta.events.register("needs-retry", needs_retry)


def fetch_page(
    client: Any,
    method: str,
    items_key: str,
    token: str | None = None,
    page_size: int = 100,
    **kwargs: Any,
) -> tuple[list[Any], str | None]:
    """Up to `page_size` items of a paged list call; the returned token resumes after them (None at
    the end). boto3's paginator does the paging, whether the call pages by `nextToken` or `marker`.

    Activities heartbeat the token between pages so that a retried activity resumes where the
    failed attempt stopped instead of starting the fleet over.
    """
    if not client.can_paginate(method):  # search_index: the one paged call boto3 has no paginator for
        args = dict(kwargs, maxResults=page_size, **({"nextToken": token} if token else {}))
        resp = getattr(client, method)(**args)
        return resp.get(items_key, []), resp.get("nextToken") or None
    paginator = client.get_paginator(method)
    config = {"MaxItems": page_size, "PageSize": page_size, "StartingToken": _starting(paginator, token)}
    result = paginator.paginate(**kwargs, PaginationConfig=config).build_full_result()
    return result.get(items_key, []), result.get("NextToken") or None


def _starting(paginator: Any, token: str | None) -> str | None:
    """The paginator's own resume token for `token`; a raw AWS token (heartbeated or kept in a
    workflow by a worker from before the paginators) is wrapped as the paginator's."""
    if not token:
        return None
    key = paginator._pagination_cfg["input_token"]  # botocore has no public accessor for it
    try:
        decoded = TokenDecoder().decode(token)
    except (ValueError, TypeError):
        decoded = None
    if isinstance(decoded, dict) and key in decoded:
        return token
    return TokenEncoder().encode({key: token})


def all_items(client: Any, method: str, items_key: str, page_size: int = 100, **kwargs: Any) -> Iterator[Any]:
    """Every item of a paged list call, fetched page by page (never the whole fleet at once)."""
    for page in pages(client, method, items_key, page_size, **kwargs):
        yield from page


def pages(
    client: Any, method: str, items_key: str, page_size: int = 100, **kwargs: Any
) -> Iterator[list[Any]]:
    """The items of a paged list call, a page at a time."""
    if not client.can_paginate(method):
        token: str | None = None
        while True:
            items, token = fetch_page(client, method, items_key, token, page_size, **kwargs)
            yield items
            if not token:
                return
    for page in client.get_paginator(method).paginate(**kwargs, PaginationConfig={"PageSize": page_size}):
        yield page.get(items_key, [])


def group_member_pages(iot: Any, group: str, page_size: int = 100) -> Iterator[list[str]]:
    """The things of a thing group and of its children, a page at a time (cutover scopes nest)."""
    return pages(iot, "list_things_in_thing_group", "things", page_size, thingGroupName=group, recursive=True)


__all__ = [
    "AwsClients",
    "SERVICES",
    "all_items",
    "fetch_page",
    "group_member_pages",
    "pages",
    "error_code",
    "is_throttle",
]
