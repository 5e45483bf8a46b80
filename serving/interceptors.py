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

from serving.auth import GUARDED, Guard
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

        async def unimplemented(_, context):
            context.set_code(grpc.StatusCode.UNIMPLEMENTED)
            context.set_details("streaming requests are not served; send unary calls")
            return
            yield  # an async generator that sends no message

        self._unimplemented_stream = grpc.stream_stream_rpc_method_handler(unimplemented)
        unread = {"request_deserializer": lambda _: None}
        self._shed = grpc.unary_unary_rpc_method_handler(refuse, **unread)
        self._shed_stream = grpc.unary_stream_rpc_method_handler(refuse_stream, **unread)
        # by method: our handler around the servicer's, built on its first call (grpc's lookup and our
        # wrapping, once per method rather than per call)
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        self._counted: dict[tuple[str, grpc.StatusCode], tuple] = {}

    def _check(self, method: str, token: Token | None, parsed) -> None:
        """The checks before a call runs, once its token is known: its body, its scope and quotas."""
        request, unparsable = parsed
        _refuse_unparsable(request, unparsable)
        self.guard.authorize(method, token, request)

    async def _fail(self, method: str, token: Token | None, request, context, error: Exception, start: float) -> None:
        status = _failure(method, error)
        self._finish(method, token, request, status.code, start)  # before abort: the client may read /metrics as soon as it has the status
        await context.abort(status.code, status.details, status.trailing_metadata)

    def _finish(self, method: str, token: Token | None, request, code: grpc.StatusCode, start: float) -> None:
        counted = self._counted.get((method, code))
        if counted is None:  # a labelled child looked up once: labels() takes a lock and builds a key every time
            counted = self._counted[method, code] = (REQUESTS.labels(method, code.name), LATENCY.labels(method))
        counted[0].inc()
        counted[1].observe(time.perf_counter() - start)
        self.guard.audit(method, token, request, code)

    def _unary(self, method: str, handler):
        inner = handler.unary_unary

        async def call(parsed, context):
            start, token, request = time.perf_counter(), None, parsed[0]
            self.calls += 1
            try:
                token = self.guard.authenticate(method, context.invocation_metadata())
                self._check(method, token, parsed)
                response = await inner(request, context)
            except Exception as error:  # noqa: BLE001 - every failure becomes a status, the server goes on
                failure = error
            else:
                self._finish(method, token, request, grpc.StatusCode.OK, start)
                return response
            finally:
                self.calls -= 1
            await self._fail(method, token, request, context, failure, start)

        return grpc.unary_unary_rpc_method_handler(
            call, request_deserializer=_lenient(handler.request_deserializer), response_serializer=handler.response_serializer
        )

    def _stream(self, method: str, handler):
        inner = handler.unary_stream

        async def stream(parsed, context):
            start, token, request = time.perf_counter(), None, parsed[0]
            self.calls += 1
            try:
                token = self.guard.authenticate(method, context.invocation_metadata())
                self._check(method, token, parsed)
                async for response in inner(request, context):
                    yield response
            except Exception as error:  # noqa: BLE001 - every failure becomes a status, the server goes on
                failure = error
            else:
                self._finish(method, token, request, grpc.StatusCode.OK, start)
                return
            finally:
                self.calls -= 1
            await self._fail(method, token, request, context, failure, start)

        return grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=_lenient(handler.request_deserializer), response_serializer=handler.response_serializer
        )

    async def intercept_service(self, continuation, details):
        method = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            handler = await continuation(details)
            if handler is None or not method.startswith(GUARDED):
                return handler  # unknown methods, health and reflection pass through
            if handler.request_streaming:  # the Open Inference Protocol's ModelStreamInfer: not served, its stream never read
                return self._unimplemented_stream
            wrapped = self._wrapped[method] = self._unary(method, handler) if handler.unary_stream is None else self._stream(method, handler)
        if self.calls >= self.max_calls:
            return self._shed if wrapped.unary_stream is None else self._shed_stream
        return wrapped
