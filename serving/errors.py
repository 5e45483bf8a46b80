"""Errors the gateway answers with: each maps to one gRPC status code (see serving/interceptors.py)."""
import grpc


class ServingError(Exception):
    code = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, field: str | None = None):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.description = message


class InvalidArgument(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ServingError):
    code = grpc.StatusCode.ALREADY_EXISTS


class ResourceExhausted(ServingError):
    """Over a limit; `retry_after` (seconds), when set, becomes a google.rpc.RetryInfo detail."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, field: str | None = None, retry_after: float | None = None):
        super().__init__(message, field)
        self.retry_after = retry_after


class FailedPrecondition(ServingError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(ServingError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ServingError):
    code = grpc.StatusCode.PERMISSION_DENIED
