"""The error classifier: which failures a retry can fix, and the throttle signal the rate limiter gets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ReadTimeoutError,
    UnknownServiceError,
)
from prometheus_client import REGISTRY

from core.aws import AwsClients
from core.errors import is_retryable, is_throttle, to_application_error
from tests.conftest import make_config


def _client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op"
    )


@pytest.mark.parametrize(
    "exc",
    [
        EndpointConnectionError(endpoint_url="https://iot.us-east-1.amazonaws.com"),
        ConnectTimeoutError(endpoint_url="https://iot.us-east-1.amazonaws.com"),
        ReadTimeoutError(endpoint_url="https://iot.us-east-1.amazonaws.com"),
        CredentialRetrievalError(provider="container-role", error_msg="timed out"),
        _client_error("ThrottlingException", 429),
        _client_error("ServiceUnavailableException", 503),
        _client_error("WhateverBroke", 500),
        ConnectionResetError(),
        TimeoutError(),
    ],
    ids=type,
)
def test_transient_failures_are_retryable(exc: BaseException) -> None:
    assert is_retryable(exc)
    assert not to_application_error(exc, "doing").non_retryable


@pytest.mark.parametrize(
    ("exc", "hint"),
    [
        (ParamValidationError(report="Invalid length for parameter thingName"), "request does not match"),
        (NoCredentialsError(), "credentials"),
        (PartialCredentialsError(provider="env", cred_var="AWS_SECRET_ACCESS_KEY"), "credentials"),
        (NoRegionError(), "region"),
        (UnknownServiceError(service_name="iot-nope", known_service_names="iot"), "botocore"),
        (_client_error("LimitExceededException"), "resource limit"),
        (_client_error("AccessDeniedException", 403), "grant"),
        (_client_error("InvalidRequestException"), "fix the request"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else v,
)
def test_failures_no_retry_can_fix_say_what_to_do(exc: BaseException, hint: str) -> None:
    assert not is_retryable(exc)
    err = to_application_error(exc, "creating thing d1", "us-east-1")
    assert err.non_retryable
    assert "creating thing d1 in us-east-1 failed" in str(err)
    assert hint in str(err).split("(hint: ", 1)[1]


def test_a_resource_limit_is_not_a_throttle() -> None:
    assert not is_throttle(_client_error("LimitExceededException"))
    assert is_throttle(_client_error("ThrottledException"))
    assert is_throttle(_client_error("AnythingAtAll", 429))


class _AwsErrors(BaseHTTPRequestHandler):
    """Answers every request with the AWS error code the test sets (a rest-json error)."""

    code = "LimitExceededException"

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"message": "from the test server"}'
        self.send_response(400)
        self.send_header("x-amzn-ErrorType", type(self).code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def aws_errors(local_ca, tmp_path: Path) -> Iterator[tuple[AwsClients, type[_AwsErrors]]]:
    handler = type("Handler", (_AwsErrors,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    ca = tmp_path / "ca.pem"
    ca.write_text(local_ca.cert_pem)
    try:
        yield AwsClients(make_config({"us-east-1": url, "us-west-2": url}, ca), max_attempts=1), handler
    finally:
        server.shutdown()
        server.server_close()


def _calls(outcome: str) -> float:
    labels = {"region": "us-east-1", "api": "ListThings", "outcome": outcome}
    return REGISTRY.get_sample_value("iotfailover_aws_calls_total", labels) or 0.0


@pytest.mark.parametrize(
    ("code", "throttle"),
    [("LimitExceededException", False), ("ThrottledException", True), ("SlowDown", True)],
)
def test_the_rate_limiter_slows_down_on_every_throttle_code_and_only_on_those(
    aws_errors: tuple[AwsClients, type[_AwsErrors]], code: str, throttle: bool
) -> None:
    aws, handler = aws_errors
    handler.code = code
    before, throttled_before = aws.limiter.rate("us-east-1", "ListThings"), _calls("throttled")
    with pytest.raises(ClientError) as e:
        aws.iot("us-east-1").list_things()
    assert e.value.response["Error"]["Code"] == code
    slowed = aws.limiter.rate("us-east-1", "ListThings") < before
    assert (slowed, _calls("throttled") > throttled_before) == (throttle, throttle)


@dataclass
class _ActInput:
    region: str
    code: str


def test_an_aws_activity_raises_its_failures_classified_and_named_after_its_input() -> None:
    from botocore.exceptions import ClientError
    from temporalio import activity
    from temporalio.exceptions import ApplicationError

    from core.errors import aws_activity, failing_as

    class Acts:
        @activity.defn
        @aws_activity(lambda inp: (f"doing {inp.code}", inp.region))
        def act(self, inp: _ActInput) -> str:
            if inp.code == "ok":
                return "done"
            raise ClientError({"Error": {"Code": inp.code, "Message": "m"}}, "ListThings")

    acts = Acts()
    assert acts.act(_ActInput("r1", "ok")) == "done"
    assert activity._Definition.from_callable(acts.act).name == "act"  # registered under its own name
    with pytest.raises(ApplicationError) as e:
        acts.act(_ActInput("r1", "ThrottlingException"))
    assert not e.value.non_retryable and "doing ThrottlingException in r1 failed, will retry" in str(e.value)
    with pytest.raises(ApplicationError) as e, failing_as("reading", "r2"):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "m"}}, "GetItem")
    assert e.value.non_retryable and "reading in r2 failed" in str(e.value)
