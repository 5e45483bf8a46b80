"""OpenTelemetry traces (serving/tracing.py), read from an in-memory exporter on the process's tracer provider."""
import asyncio
import io

import grpc
import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from PIL import Image

from latentserve.repository import read_repository
from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, search_pb2, search_pb2_grpc
from serving import tracing
from serving.runtime.triton import TritonRuntime
from tests.conftest import MODEL_REPOSITORY, RunningGateway, tensor_batch, wait_for

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def exporter():
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(scope="module")
def gateway(exporter, tmp_path_factory):
    running = RunningGateway(data_dir=tmp_path_factory.mktemp("data"), gallery="none", tracing=True).start()
    yield running
    running.stop()


@pytest.fixture
def spans(exporter):
    """`spans(*names)`: the spans finished during the test, by name, once each of `names` has finished (a
    call's span ends on the server just after the client has its answer)."""
    exporter.clear()

    def by_name() -> dict[str, list]:
        found: dict[str, list] = {}
        for finished in exporter.get_finished_spans():
            found.setdefault(finished.name, []).append(finished)
        return found

    def finished(*names: str) -> dict[str, list]:
        wait_for(lambda: all(name in by_name() for name in names), timeout=10)
        return by_name()

    return finished


def test_a_call_continues_the_clients_trace_with_its_model_and_an_inference_span(gateway, spans):
    with gateway.channel() as channel:
        encoder_pb2_grpc.EncoderStub(channel).Encode(
            encoder_pb2.EncodeRequest(images=tensor_batch(np.zeros((3, 28, 28), np.float32))),
            metadata=[("traceparent", f"00-{TRACE_ID}-{CLIENT_SPAN}-01")],
        )
    found = spans("/latentserve.v1.Encoder/Encode")
    (call,) = found["/latentserve.v1.Encoder/Encode"]
    assert format(call.context.trace_id, "032x") == TRACE_ID and format(call.parent.span_id, "016x") == CLIENT_SPAN
    assert call.kind == trace.SpanKind.SERVER
    attributes = call.attributes
    assert (attributes["latentserve.capability"], attributes["latentserve.model"], attributes["latentserve.graph"]) == ("encode", "autoencoder", "encoder")
    assert attributes["latentserve.images"] == 3 and attributes["latentserve.version"] == read_repository(MODEL_REPOSITORY)["autoencoder_encoder"].versions[0]
    (inference,) = found["inference"]
    assert inference.parent.span_id == call.context.span_id and inference.attributes["latentserve.model"] == "autoencoder_encoder"
    assert not any(name.startswith("/grpc.health") for name in found)


def test_decode_and_index_work_get_spans_of_their_own(gateway, spans):
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buffer, format="PNG")
    image = common_pb2.Image(encoded=buffer.getvalue())
    with gateway.channel() as channel:
        stub = search_pb2_grpc.SearchStub(channel)
        stub.AddItems(search_pb2.AddItemsRequest(items=[search_pb2.Item(id="traced", image=image)]))
        stub.Search(search_pb2.SearchRequest(id="traced", k=1))
    found = spans("/latentserve.v1.Search/AddItems", "/latentserve.v1.Search/Search")
    assert [s.attributes["latentserve.operation"] for s in found["index"]] == ["add", "search"]
    (add,) = found["/latentserve.v1.Search/AddItems"]
    (decode,) = found["decode"]
    assert decode.parent.span_id == add.context.span_id and decode.attributes["latentserve.files"] == 1


def test_a_refused_call_carries_its_status(gateway, spans):
    with gateway.channel() as channel, pytest.raises(grpc.RpcError):
        encoder_pb2_grpc.EncoderStub(channel).Encode(encoder_pb2.EncodeRequest())
    (call,) = spans("/latentserve.v1.Encoder/Encode")["/latentserve.v1.Encoder/Encode"]
    assert call.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert call.status.status_code == StatusCode.UNSET  # the conventions: a client's mistake is no server error


def test_with_tracing_off_a_call_makes_no_span(exporter, spans, tmp_path):
    untraced = RunningGateway(data_dir=tmp_path, gallery="none").start()
    try:
        with untraced.channel() as channel:
            encoder_pb2_grpc.EncoderStub(channel).Encode(encoder_pb2.EncodeRequest(images=tensor_batch(np.zeros((1, 28, 28), np.float32))))
    finally:
        untraced.stop()
    assert spans() == {}


def test_the_trace_context_goes_to_triton_with_the_call(exporter):
    async def scenario():
        runtime = TritonRuntime("127.0.0.1:1", MODEL_REPOSITORY)  # never reached: the client is a stand-in
        entry = read_repository(MODEL_REPOSITORY)["autoencoder_encoder"]
        runtime._entries = {entry.name: entry}
        sent = []

        class Result:
            def as_numpy(self, name):
                return np.zeros((1, 32), np.float32 if name == "code" else np.uint8)

        async def infer(*args, headers=None, **kwargs):
            sent.append(headers)
            return Result()

        runtime._client.infer = infer
        inputs = {"image": np.zeros((1, 1, 28, 28), np.float32)}
        await runtime.infer(entry, entry.versions[0], inputs)
        with tracing.TRACER.start_as_current_span("a call") as current:
            await runtime.infer(entry, entry.versions[0], inputs)
        await runtime.close()
        return sent, format(current.get_span_context().trace_id, "032x")

    sent, trace_id = asyncio.run(scenario())
    assert sent[0] == {} and sent[1]["traceparent"].split("-")[1] == trace_id
