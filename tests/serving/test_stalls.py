"""No request stalls the others: encoded images decode on a worker thread, within a pixel budget per
request read from their headers, so health keeps answering while a large image decodes."""
import io
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from serving.triton_server import free_ports
from tests.conftest import assert_refused

SIDE = 4096
BUDGET = 16 * SIDE * SIDE  # 16 of these images a request: about a second of decoding on this machine


def blank_png(side: int) -> bytes:
    """A side x side black PNG: a few KB on the wire, side**2 pixels to decode."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    from tests.conftest import RunningGateway

    running = RunningGateway(data_dir=tmp_path_factory.mktemp("data"), gallery="none", max_request_pixels=BUDGET).start()
    yield running
    running.stop()


def encode(files: list[bytes]) -> encoder_pb2.EncodeRequest:
    return encoder_pb2.EncodeRequest(images=common_pb2.Images(encoded=common_pb2.EncodedImages(images=files)))


def test_a_request_declaring_more_pixels_than_its_budget_is_refused_before_decoding(gateway):
    files = [blank_png(SIDE)] * 32  # 537 megapixels in 32 small files
    assert sum(map(len, files)) < 1 << 20
    with gateway.channel() as channel, pytest.raises(grpc.RpcError) as raised:
        began = time.monotonic()
        encoder_pb2_grpc.EncoderStub(channel).Encode(encode(files), timeout=30)
    assert_refused(raised.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "images")
    assert time.monotonic() - began < 2  # refused from the headers; decoding them takes far longer


def test_health_answers_while_large_images_decode(gateway):
    request, answered, took = encode([blank_png(SIDE)] * 16), [], []  # within the budget: decoded

    def large():
        began = time.monotonic()
        with gateway.channel() as channel:
            encoder_pb2_grpc.EncoderStub(channel).Encode(request, timeout=60)
        took.append(time.monotonic() - began)

    worker = threading.Thread(target=large)
    with gateway.channel() as channel:
        health = health_pb2_grpc.HealthStub(channel)
        health.Check(health_pb2.HealthCheckRequest(), timeout=5)  # connected before the large call starts
        worker.start()
        while not took:
            # decoding on the event loop would hold every call for the whole second
            answered.append(health.Check(health_pb2.HealthCheckRequest(), timeout=0.25).status)
    worker.join()
    assert took[0] > 0.5, "the decode was too quick to show anything"
    assert len(answered) >= 2 and set(answered) == {health_pb2.HealthCheckResponse.SERVING}


def test_the_health_port_answers_while_the_event_loop_is_busy(start_gateway, tmp_path):
    health_port, = free_ports(1)
    running = start_gateway(data_dir=tmp_path, gallery="none", health_port=health_port)
    request = health_pb2.HealthCheckRequest()
    with running.channel() as main, grpc.insecure_channel(f"127.0.0.1:{health_port}") as side:
        main_health, side_health = health_pb2_grpc.HealthStub(main), health_pb2_grpc.HealthStub(side)
        for stub in (main_health, side_health):
            assert stub.Check(request, timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        running.loop.call_soon_threadsafe(time.sleep, 2)  # the gateway's event loop does nothing else for 2 s
        time.sleep(0.2)
        assert side_health.Check(request, timeout=0.5).status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as raised:
            main_health.Check(request, timeout=0.5)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    running.stop()
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as side, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(side).Check(request, timeout=1)  # stopped with the gateway
