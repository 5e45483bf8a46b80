"""`latentserve bench tracing`: what OpenTelemetry tracing costs, Encode through a gateway with tracing on
and one with it off, in one run (the serving benchmark's table and client).

The traced gateway exports its spans over OTLP/gRPC to a collector stand-in in this process that counts
them and drops them, so the cost includes making, batching and sending every span.
"""
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from benchmarks.gateway import compare, gateway_process
from latentserve import repository
from serving.triton_server import free_ports


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Counts the spans it is sent."""

    def __init__(self):
        self.spans = 0
        self._lock = threading.Lock()

    def Export(self, request, context):
        with self._lock:
            self.spans += sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@contextlib.contextmanager
def collector():
    """An OTLP/gRPC collector stand-in on a free loopback port: (its endpoint, the Collector)."""
    port, = free_ports(1)
    counting = Collector()
    server = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(counting, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", counting
    finally:
        server.stop(None)


def main(repository_root: Path, duration: float) -> None:
    entry = repository.read_repository(repository_root)["autoencoder_encoder"]
    with collector() as (endpoint, counting), contextlib.ExitStack() as stack:
        off = stack.enter_context(gateway_process(repository_root, "--gallery", "none"))
        on = stack.enter_context(gateway_process(repository_root, "--gallery", "none", settings={"tracing": "true", "tracing_otlp_endpoint": endpoint}))
        compare({"tracing off": off, "tracing on": on}, "Encode", entry, duration)
    print(f"\nspans the collector received: {counting.spans}")
