"""One interceptor for what every call needs: authentication, scopes and quotas (serving/auth.py), errors
mapped to gRPC statuses, metrics, and the audit log. A request body that does not parse is INVALID_ARGUMENT.

A ServingError becomes its status code with the message naming the field, plus a google.rpc.BadRequest
detail for INVALID_ARGUMENT and a google.rpc.RetryInfo detail for a quota's RESOURCE_EXHAUSTED; anything
else is logged and answered INTERNAL, and the server keeps serving.
"""
import logging
import math
import time

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from prometheus_client import Counter, Histogram

from serving.auth import Guard
from serving.errors import InvalidArgument, ResourceExhausted, ServingError
from serving.tokens import Token

log = logging.getLogger(__name__)

REQUESTS = Counter("latentserve_requests_total", "gRPC calls answered", ["method", "code"])
LATENCY = Histogram(
    "latentserve_request_seconds", "gRPC call latency", ["method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SHED = Counter("latentserve_shed_calls_total", "calls refused unread: max_concurrent_calls were running")
MAX_MESSAGE_CHARS = 1000  # a status travels in trailing metadata (8 KiB): a message quoting a client's string is cut


def _cut(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + "..."


def _status(code: grpc.StatusCode, message: str, details: tuple = ()) -> grpc.Status:
    status = status_pb2.Status(code=code.value[0], message=_cut(message))
    for detail in details:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return rpc_status.to_status(status)


def _details(error: ServingError) -> tuple:
    """The google.rpc details of an error: the field an INVALID_ARGUMENT names, when to retry after a quota."""
    if error.code == grpc.StatusCode.INVALID_ARGUMENT and error.field:
        return (error_details_pb2.BadRequest(
            field_violations=[error_details_pb2.BadRequest.FieldViolation(field=error.field, description=_cut(error.description))]
        ),)
    if isinstance(error, ResourceExhausted) and error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(math.ceil(error.retry_after * 1e9))
        return (error_details_pb2.RetryInfo(retry_delay=delay),)
    return ()


def _lenient(deserializer):
    """A request deserializer that never raises (grpc would answer UNKNOWN and log a traceback): it gives
    (request, None), or (the empty request, the error) for a body that does not parse."""

    def deserialize(body: bytes):
        try:
            return deserializer(body), None
        except Exception as error:  # noqa: BLE001 - DecodeError, or whatever else the parser raises
            return deserializer(b""), error

    return deserialize


def _refuse_unparsable(request, unparsable: Exception | None) -> None:
    if unparsable is not None:
        raise InvalidArgument(f"the request body is not a valid {type(request).DESCRIPTOR.full_name} message", "request")


def _failure(method: str, error: Exception) -> grpc.Status:
    if isinstance(error, ServingError):
        return _status(error.code, str(error), _details(error))
    log.error("%s failed", method, exc_info=error)
    return _status(grpc.StatusCode.INTERNAL, "internal error; see the server log")


async def _once(response):
    yield await response


class ErrorsAndMetrics(grpc.aio.ServerInterceptor):
    """Wraps unary calls and our server-streaming ones; the health Watch and reflection streams pass through.
    Before a call runs, `guard` checks its token, scope and quotas; after it, the guard audits writes.
    While `max_calls` of our calls run, a new one is refused before its request is even parsed: under
    overload a refusal must cost the event loop as little as possible."""

    def __init__(self, guard: Guard, max_calls: int):
        self.guard = guard
        self.max_calls = max_calls
        self.calls = 0  # our calls running now

        async def refuse(_, context):  # no exception raised, no details packed: the cheapest status grpc sends
            SHED.inc()
            context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
            context.set_details(f"the gateway is running its limit of {max_calls} calls (max_concurrent_calls); retry later")

        async def refuse_stream(request, context):
            await refuse(request, context)
            return
            yield  # an async generator that sends no message

        unread = {"request_deserializer": lambda _: None}
        self._shed = grpc.unary_unary_rpc_method_handler(refuse, **unread)
        self._shed_stream = grpc.unary_stream_rpc_method_handler(refuse_stream, **unread)

    async def _run(self, method: str, details, parsed, context, responses):
        """Checks, then the responses of `responses(request)`, each failure answered as a status, the call
        counted, measured and audited."""
        start = time.perf_counter()
        token, (request, unparsable) = None, parsed
        self.calls += 1
        try:
            token = self.guard.authenticate(method, details.invocation_metadata)
            _refuse_unparsable(request, unparsable)
            self.guard.authorize(method, token, request)
            async for response in responses(request):
                yield response
        except Exception as error:  # noqa: BLE001 - every failure becomes a status, the server goes on
            status = _failure(method, error)
        else:
            self._finish(method, token, request, grpc.StatusCode.OK, start)
            return
        finally:
            self.calls -= 1
        self._finish(method, token, request, status.code, start)  # before abort: the client may read /metrics as soon as it has the status
        await context.abort(status.code, status.details, status.trailing_metadata)

    def _finish(self, method: str, token: Token | None, request, code: grpc.StatusCode, start: float) -> None:
        REQUESTS.labels(method, code.name).inc()
        LATENCY.labels(method).observe(time.perf_counter() - start)
        self.guard.audit(method, token, request, code)

    async def intercept_service(self, continuation, details):
        method = details.method
        ours = method.startswith("/latentserve.")
        handler = await continuation(details)
        if ours and handler is not None and self.calls >= self.max_calls:
            return self._shed if handler.unary_stream is None else self._shed_stream
        if handler is not None and handler.unary_unary is not None:
            inner = handler.unary_unary

            async def call(parsed, context):
                responses = [r async for r in self._run(method, details, parsed, context, lambda request: _once(inner(request, context)))]
                return responses[0]

            return grpc.unary_unary_rpc_method_handler(
                call, request_deserializer=_lenient(handler.request_deserializer), response_serializer=handler.response_serializer
            )
        if handler is not None and handler.unary_stream is not None and ours:
            inner = handler.unary_stream

            async def stream(parsed, context):
                async for response in self._run(method, details, parsed, context, lambda request: inner(request, context)):
                    yield response

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=_lenient(handler.request_deserializer), response_serializer=handler.response_serializer
            )
        return handler
