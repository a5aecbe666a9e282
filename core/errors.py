"""The one error classifier: which AWS failures a retry can fix and which need a person.

Throttling, 5xx and connection errors are retryable (the activity's RetryPolicy backs off);
validation, access denied and missing configured resources become non-retryable ApplicationErrors
whose message says what to fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)

if TYPE_CHECKING:  # imported where used: the bootstrap Lambda classifies errors without temporalio
    from temporalio.exceptions import ApplicationError

THROTTLING_CODES = {
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ProvisionedThroughputExceededException",
    "RequestThrottled",
    "SlowDown",
    "LimitExceededException",
}
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


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return exc.response.get("Error", {}).get("Code", "") or ""
    return type(exc).__name__


def http_status(exc: BaseException) -> int:
    if isinstance(exc, ClientError):
        return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0


def is_throttle(exc: BaseException) -> bool:
    return error_code(exc) in THROTTLING_CODES or http_status(exc) == 429


def is_already_exists(exc: BaseException) -> bool:
    return error_code(exc) in ALREADY_EXISTS_CODES


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in NOT_FOUND_CODES


def is_conflict(exc: BaseException) -> bool:
    return error_code(exc) in CONFLICT_CODES


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, EndpointConnectionError | ConnectionClosedError | ReadTimeoutError):
        return True
    if isinstance(exc, ClientError):
        return error_code(exc) in RETRYABLE_CODES or http_status(exc) >= 500 or is_throttle(exc)
    return isinstance(exc, BotoCoreError | ConnectionError | TimeoutError)


def to_application_error(exc: BaseException, doing: str, region: str = "") -> ApplicationError:
    """Wrap an AWS failure as an ApplicationError that says whether a retry can help."""
    from temporalio.exceptions import ApplicationError

    where = f" in {region}" if region else ""
    code = error_code(exc)
    if is_retryable(exc):
        return ApplicationError(
            f"{doing}{where} failed, will retry: {code}: {exc}", type=code or "AwsTransient"
        )
    if code in ACCESS_CODES:
        hint = "grant the controller's role this action (deploy/aws/controller-role.yaml)"
    elif is_not_found(exc):
        hint = "create the resource or fix its name in the deployment config"
    else:
        hint = "fix the request or the deployment config"
    return ApplicationError(
        f"{doing}{where} failed: {code}: {exc} (hint: {hint})", type=code or "AwsError", non_retryable=True
    )
