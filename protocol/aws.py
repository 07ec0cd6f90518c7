"""AWS plumbing shared by the scheduler, the worker daemon and the provisioner.

One place builds every aioboto3 client (region, endpoint, retry mode) and counts
every HTTP request each one sends, by service and operation, through a botocore
``before-send`` hook: requests per task is the bill, so it is a first-class figure.
DynamoDB write units are counted from the ``ConsumedCapacity`` the writes return.
botocore's exceptions are translated here into :class:`AwsError` subclasses with
one clear line each.

No connection is opened at import: clients are opened by the daemons' event loops.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aioboto3
import botocore.exceptions
from botocore.config import Config

# --- settings -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class AwsSettings:
    """Names and endpoints of the AWS resources; loaded like every settings class
    (flags, ``TASKMILL_*`` environment, TOML ``[aws]`` table)."""

    aws_region: str = "us-east-1"
    aws_endpoint_url: str | None = None  # e.g. a moto server in tests
    request_queue: str = "taskmill-requests"
    dead_letter_queue: str = "taskmill-requests-dlq"
    reply_queue_prefix: str = "taskmill-replies-"
    tasks_table: str = "taskmill-tasks"
    workers_table: str = "taskmill-workers"
    visibility_timeout_s: int = 60  # a worker extends it while it runs a bundle
    lease_s: int = 60  # a claim's lease in the tasks table, extended by heartbeats
    max_receive_count: int = 5  # deliveries before a message goes to the dead-letter queue
    max_aws_attempts: int = 8  # botocore's retries for throttling and transient errors


# --- request accounting -------------------------------------------------------------------


class RequestCounter:
    """HTTP requests by ``service.Operation``, and DynamoDB write units. Thread safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.ddb_write_units = 0.0

    def on_send(self, event_name: str, **_: Any) -> None:
        # event_name is "before-send.<service>.<Operation>": one per HTTP attempt.
        _event, service, operation = event_name.split(".", 2)
        key = f"{service}.{operation}"
        with self._lock:
            self.requests[key] = self.requests.get(key, 0) + 1

    def on_ddb_response(self, parsed: Mapping[str, Any] | None = None, **_: Any) -> None:
        if not parsed:
            return
        consumed = parsed.get("ConsumedCapacity")
        if consumed is None:
            return
        items = consumed if isinstance(consumed, list) else [consumed]
        units = sum(
            float(c.get("CapacityUnits") or c.get("WriteCapacityUnits") or 0) for c in items
        )
        with self._lock:
            self.ddb_write_units += units

    def total(self, service: str | None = None) -> int:
        with self._lock:
            return sum(
                n
                for key, n in self.requests.items()
                if service is None or key.startswith(service + ".")
            )

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": dict(sorted(self.requests.items())),
                "total": sum(self.requests.values()),
                "ddb_write_units": round(self.ddb_write_units, 2),
            }


# --- errors -------------------------------------------------------------------------------


class AwsError(Exception):
    """Root of AWS failures, each with a one-line message naming what was wrong."""


class ResourceMissing(AwsError):
    """A queue or table does not exist (run ``taskmill init-aws``)."""


class CredentialsError(AwsError):
    pass


class EndpointUnreachable(AwsError):
    pass


class AwsRequestFailed(AwsError):
    """Any other error AWS returned, after botocore's retries."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


_MISSING_CODES = {
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "ResourceNotFoundException",
}
_CREDENTIAL_CODES = {
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "AccessDeniedException",
    "ExpiredToken",
}


def translate(exc: BaseException, what: str) -> AwsError:
    """Map a botocore/OS error met while doing ``what`` to an :class:`AwsError`."""
    if isinstance(exc, AwsError):
        return exc
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = str(error.get("Message", "")) or code
        if code in _MISSING_CODES or error.get("QueryErrorCode") == "QueueDoesNotExist":
            return ResourceMissing(f"{what}: {message} (run `taskmill init-aws` to create it)")
        if code in _CREDENTIAL_CODES:
            return CredentialsError(f"{what}: AWS refused the credentials: {message}")
        return AwsRequestFailed(f"{what}: {code}: {message}", code)
    if isinstance(
        exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return CredentialsError(f"{what}: no AWS credentials found ({exc})")
    if isinstance(
        exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError
    ):
        return EndpointUnreachable(f"{what}: cannot reach AWS: {exc}")
    if isinstance(exc, botocore.exceptions.BotoCoreError | OSError):
        return AwsRequestFailed(f"{what}: {exc}")
    raise TypeError(f"not an AWS error: {exc!r}") from exc


TRANSLATED = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError)


@contextlib.contextmanager
def aws_errors(what: str) -> Any:
    """``with aws_errors("sending bundles"):`` turns botocore errors into AwsError."""
    try:
        yield
    except TRANSLATED as exc:
        raise translate(exc, what) from exc


# --- clients ------------------------------------------------------------------------------


class AwsClients:
    """Builds counted aioboto3 clients from :class:`AwsSettings` (standard credential chain)."""

    def __init__(self, settings: AwsSettings, *, counter: RequestCounter | None = None) -> None:
        self.settings = settings
        self.counter = counter or RequestCounter()
        self.session = aioboto3.Session(region_name=settings.aws_region)
        self.config = Config(
            retries={"mode": "standard", "max_attempts": settings.max_aws_attempts},
            connect_timeout=5,
            read_timeout=30,  # above SQS's 20 s long poll
            max_pool_connections=50,
        )

    @contextlib.asynccontextmanager
    async def client(self, service: str) -> AsyncIterator[Any]:
        async with self.session.client(
            service, endpoint_url=self.settings.aws_endpoint_url, config=self.config
        ) as client:
            events = client.meta.events
            events.register(f"before-send.{service}.*", self.counter.on_send)
            if service == "dynamodb":
                events.register("after-call.dynamodb.*", self.counter.on_ddb_response)
            yield client
