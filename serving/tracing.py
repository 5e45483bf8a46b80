"""OpenTelemetry traces, off unless `tracing` is set.

With tracing on, OpenTelemetry's gRPC instrumentation opens a server span for each call to our services
(latentserve.v1 and the Open Inference Protocol; health and reflection are left out), continuing the W3C
trace context a client sends in its metadata. The call adds to that span its capability, model, graph,
version and images, and opens child spans for the work inside: `decode` (images from their files),
`inference` (the runtime; on Triton the context goes along in the call's metadata, so Triton's own spans
join the trace when its tracing is on) and `index` (search and writes). Spans go to an OTLP collector
over gRPC when `tracing_otlp_endpoint` is set.

One tracer provider serves the process, as OpenTelemetry has it: the first gateway to turn tracing on
sets it, unless the process has set one already (a test's in-memory exporter, say), which is then used.
With tracing off nothing opens a span: `span` and `annotate` see no recording span and do nothing.
"""
import contextlib

from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from serving.settings import Settings

TRACER = trace.get_tracer("latentserve")


def server_interceptor(settings: Settings):
    """The instrumentation's interceptor, on the process's tracer provider (set here if none is), with an
    OTLP exporter when `tracing_otlp_endpoint` is set."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the API's stand-in: nobody has set one
        provider = TracerProvider(resource=Resource.create({"service.name": settings.tracing_service_name}))
        trace.set_tracer_provider(provider)
    if settings.tracing_otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.tracing_otlp_endpoint)))
    ours = filters.any_of(filters.service_prefix("latentserve."), filters.service_name("inference.GRPCInferenceService"))
    return aio_server_interceptor(tracer_provider=provider, filter_=ours)


def flush() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush()


def annotate(**attributes) -> None:
    """Attributes of the call's span (`latentserve.<name>`), if the call is traced."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes({f"latentserve.{name}": value for name, value in attributes.items()})


@contextlib.contextmanager
def span(name: str, **attributes):
    """A child span of the call's, if the call is traced."""
    if not trace.get_current_span().is_recording():
        yield
        return
    with TRACER.start_as_current_span(name, attributes={f"latentserve.{key}": value for key, value in attributes.items()}):
        yield


def context_headers() -> dict[str, str]:
    """The current trace context as W3C headers (`traceparent`), to pass to a backend; empty if untraced."""
    headers: dict[str, str] = {}
    if trace.get_current_span().get_span_context().is_valid:
        propagate.inject(headers)
    return headers
