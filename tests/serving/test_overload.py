"""Overload: past `max_concurrent_calls`, calls are refused unread, health still answers, and calls are
served again as soon as one ends."""
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, generator_pb2, generator_pb2_grpc
from tests.conftest import tensor_batch, wait_for


def shed() -> float:
    return REGISTRY.get_sample_value("latentserve_shed_calls_total") or 0.0


@pytest.fixture
def gateway(start_gateway, tmp_path):
    return start_gateway(data_dir=tmp_path, gallery="none", max_concurrent_calls=1)


def test_calls_past_the_limit_are_refused_and_served_again_once_one_ends(gateway, small_mnist):
    encode_request = encoder_pb2.EncodeRequest(images=tensor_batch(small_mnist.test.images[:2]))
    stream_request = generator_pb2.GenerateStreamRequest(count=100_000, chunk_size=1, format=common_pb2.IMAGE_FORMAT_TENSOR)
    with gateway.channel() as channel:
        encode = encoder_pb2_grpc.EncoderStub(channel).Encode
        encode(encode_request, timeout=30)  # below the limit: served
        holding = generator_pb2_grpc.GeneratorStub(channel).GenerateStream(stream_request, timeout=60)
        next(holding)  # the stream is running: the one call allowed
        before = shed()
        for call in (lambda: encode(encode_request, timeout=30),
                     lambda: next(generator_pb2_grpc.GeneratorStub(channel).GenerateStream(stream_request, timeout=30))):
            with pytest.raises(grpc.RpcError) as raised:
                call()
            assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_concurrent_calls" in raised.value.details()
        assert shed() == before + 2
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # health is not one of the calls counted
        holding.cancel()
        wait_for(lambda: gateway.server.interceptor.calls == 0, timeout=10)
        assert len(encode(encode_request, timeout=30).codes.shape) == 2
