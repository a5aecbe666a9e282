"""The one error classifier: which AWS failures a retry can fix and which need a person.

Throttling, 5xx, connection errors and timeouts are retryable (the activity's RetryPolicy backs
off); validation, access denied, missing credentials or configured resources, and AWS IoT resource
limits become non-retryable ApplicationErrors whose message says what to fix.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar, cast

from botocore import exceptions as boto

if TYPE_CHECKING:  # imported where used: the bootstrap Lambda classifies errors without temporalio
    from temporalio.exceptions import ApplicationError

F = TypeVar("F", bound=Callable[..., Any])
THROTTLING_CODES = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "RequestThrottled",
    "SlowDown",
}
# AWS IoT's LimitExceededException is a resource limit (things per group, groups per thing,
# concurrent jobs), not a rate: waiting does not lift it.
LIMIT_CODES = {"LimitExceededException"}
ALREADY_EXISTS_CODES = {"ResourceAlreadyExistsException", "ResourceAlreadyExists", "EntityAlreadyExists"}
NOT_FOUND_CODES = {"ResourceNotFoundException", "NoSuchEntity", "NotFoundException", "NoSuchHostedZone"}
ACCESS_CODES = {
    "AccessDeniedException",
    "AccessDenied",
    "UnauthorizedException",
    "UnrecognizedClientException",
}
CONFLICT_CODES = {"VersionConflictException", "ConditionalCheckFailedException", "ConflictException"}
RETRYABLE_CODES = THROTTLING_CODES | {
    "ServiceUnavailableException",
    "ServiceUnavailable",
    "InternalFailureException",
    "InternalServerException",
    "InternalFailure",
    "InternalError",
    "RequestTimeout",
}


# Failures of the connection or of the credential provider's own call: transient.
_TRANSIENT = (
    boto.ConnectionError,  # endpoint unreachable, connect timeout, proxy, TLS handshake
    boto.HTTPClientError,  # connection closed, read timeout, response cut off
    boto.IncompleteReadError,
    boto.CapacityNotAvailableError,  # botocore's own retry quota, refilled as calls succeed
    boto.CredentialRetrievalError,  # the container/instance/STS credential call failed
    boto.MetadataRetrievalError,
    ConnectionError,  # the builtin ones, from code that is not botocore
    TimeoutError,
)
# Every other BotoCoreError is raised before a request leaves the worker: no retry changes it.
_BOTOCORE_HINTS: tuple[tuple[tuple[type[Exception], ...], str], ...] = (
    (
        (boto.ValidationError, boto.ParamValidationError, boto.MissingParametersError),
        "the request does not match the AWS API (bad input or a bug; the message names the parameter)",
    ),
    (
        (
            boto.NoCredentialsError,
            boto.PartialCredentialsError,
            boto.UnknownCredentialError,
            boto.ProfileNotFound,
            boto.SSOError,
            boto.TokenRetrievalError,
        ),
        "give the worker AWS credentials (environment, profile or its IAM role; docs/operating.md)",
    ),
    (
        (boto.BaseEndpointResolverError, boto.EndpointProviderError, boto.UnknownRegionError),
        "check the region names and endpoint_url in the deployment config",
    ),
    (
        (boto.DataNotFoundError, boto.ApiVersionNotFoundError, boto.UnknownClientMethodError),
        "this botocore does not know the service or call: upgrade boto3/botocore",
    ),
)


def error_code(exc: BaseException) -> str:
    if isinstance(exc, boto.ClientError):
        return exc.response.get("Error", {}).get("Code", "") or ""
    return type(exc).__name__


def http_status(exc: BaseException) -> int:
    if isinstance(exc, boto.ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def is_throttle_answer(status: int, code: str) -> bool:
    """Whether an AWS answer (HTTP status, error code) is a throttle: the one definition."""
    return status == 429 or code in THROTTLING_CODES


def is_throttle(exc: BaseException) -> bool:
    return is_throttle_answer(http_status(exc), error_code(exc))


def is_already_exists(exc: BaseException) -> bool:
    return error_code(exc) in ALREADY_EXISTS_CODES


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in NOT_FOUND_CODES


def is_conflict(exc: BaseException) -> bool:
    return error_code(exc) in CONFLICT_CODES


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, boto.ClientError):
        return error_code(exc) in RETRYABLE_CODES or http_status(exc) >= 500 or is_throttle(exc)
    return isinstance(exc, _TRANSIENT)


def _hint(exc: BaseException) -> str:
    code = error_code(exc)
    if code in ACCESS_CODES:
        return (
            "grant the controller's role this action (ControllerRole in deploy/aws/region.yaml; "
            "`python -m deploy.iam_actions` lists what is missing)"
        )
    if code in LIMIT_CODES:
        return (
            "an AWS IoT resource limit was reached (things per group, groups per thing, concurrent "
            "jobs...): free some or raise the quota in Service Quotas, then run again"
        )
    if is_not_found(exc):
        return "create the resource or fix its name in the deployment config"
    for kinds, hint in _BOTOCORE_HINTS:
        if isinstance(exc, kinds):
            return hint
    if isinstance(exc, boto.BotoCoreError):
        return "fix the worker's AWS client configuration (see the message)"
    return "fix the request or the deployment config"


def to_application_error(exc: BaseException, doing: str, region: str = "") -> ApplicationError:
    """Wrap an AWS failure as an ApplicationError that says whether a retry can help."""
    from temporalio.exceptions import ApplicationError

    where = f" in {region}" if region else ""
    code = error_code(exc)
    if is_retryable(exc):
        return ApplicationError(
            f"{doing}{where} failed, will retry: {code}: {exc}", type=code or "AwsTransient"
        )
    return ApplicationError(
        f"{doing}{where} failed: {code}: {exc} (hint: {_hint(exc)})",
        type=code or "AwsError",
        non_retryable=True,
    )


@contextmanager
def failing_as(doing: str, region: str = "") -> Iterator[None]:
    """AWS failures inside become ApplicationErrors that say whether a retry can help."""
    try:
        yield
    except (boto.ClientError, boto.BotoCoreError) as e:
        raise to_application_error(e, doing, region) from e


def aws_activity(describe: Callable[[Any], tuple[str, str]]) -> Callable[[F], F]:
    """Decorator of an activity (below `@activity.defn`): an AWS failure that leaves it is raised as
    `to_application_error(e, doing, region)`, `(doing, region)` being `describe(its input)`."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any) -> Any:
            try:
                return fn(*args)
            except (boto.ClientError, boto.BotoCoreError) as e:
                raise to_application_error(e, *describe(args[-1])) from e

        return cast(F, run)

    return wrap
