"""The generate capability: the Generator service end to end over real gRPC on loopback with the shipped
generators, and interpolation."""
import io
import time

import grpc
import numpy as np
import onnxruntime
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from PIL import Image

from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, generator_pb2, generator_pb2_grpc
from latentserve import repository
from latentserve.latents import sample_latents
from serving.generation import interpolate
from tests.conftest import MODEL_REPOSITORY, RunningGateway, wait_for

CONDITIONAL, UNCONDITIONAL = "acgan", "dcgan"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    running = RunningGateway(data_dir=tmp_path_factory.mktemp("data"), gallery="none").start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(gateway):
    with gateway.channel() as channel:
        yield generator_pb2_grpc.GeneratorStub(channel)


def model(name: str, version: int = 0) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=name, version=version)


def images_of(response) -> np.ndarray:
    return np.frombuffer(response.images.data, "<f4").reshape(response.images.shape)


def latents_of(response) -> np.ndarray:
    return np.frombuffer(response.latents.data, "<f4").reshape(response.latents.shape)


def float_tensor(array: np.ndarray) -> common_pb2.Tensor:
    array = np.ascontiguousarray(array, np.float32)
    return common_pb2.Tensor(shape=array.shape, dtype=common_pb2.DATA_TYPE_FLOAT32, data=array.tobytes())


def generator_session(name: str):
    entry = next(e for e in repository.read_repository(MODEL_REPOSITORY).values() if e.model == name and e.capability == "generate")
    path = entry.version_path(entry.versions[0]) / repository.ONNX_FILE
    return entry, onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_generator_health_is_serving(gateway):
    with gateway.channel() as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="latentserve.v1.Generator"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_generate_matches_the_graph_run_directly_on_the_same_latents(stub):
    for name in ("conv_vae", "dcgan", "wgan_gp", CONDITIONAL):
        entry, session = generator_session(name)
        response = stub.Generate(generator_pb2.GenerateRequest(
            model=model(name), count=6, sampling=generator_pb2.Sampling(seed=11, start_index=3)
        ))
        latents = sample_latents(11, 3, 6, entry.latent_dim)
        np.testing.assert_array_equal(latents_of(response), latents)
        feeds = {"latent": latents}
        if entry.classes:
            assert list(response.labels) == [3, 4, 5, 6, 7, 8]  # index mod 10 when no label is asked for
            feeds["label"] = np.asarray(response.labels, np.int64)[:, None]
        (want,) = session.run(["image"], feeds)
        assert response.model.version == entry.versions[0]
        assert images_of(response).shape == (6, 28, 28)
        np.testing.assert_allclose(images_of(response), want[:, 0], atol=1e-6, err_msg=name)


def test_the_same_seed_and_index_give_the_same_image_however_the_job_is_split(stub):
    request = dict(model=model(UNCONDITIONAL), sampling=generator_pb2.Sampling(seed=5, truncation=0.7))
    whole = images_of(stub.Generate(generator_pb2.GenerateRequest(count=40, **request)))
    again = images_of(stub.Generate(generator_pb2.GenerateRequest(count=40, **request)))
    part = images_of(stub.Generate(generator_pb2.GenerateRequest(
        model=model(UNCONDITIONAL), count=10, sampling=generator_pb2.Sampling(seed=5, truncation=0.7, start_index=25)
    )))
    # bit for bit: onnxruntime's CPU kernels compute each sample alike whatever else is in the batch
    assert np.array_equal(whole, again)
    assert np.array_equal(part, whole[25:35])
    for chunk_size in (7, 64):
        chunks = list(stub.GenerateStream(generator_pb2.GenerateStreamRequest(count=40, chunk_size=chunk_size, **request)))
        assert [c.start_index for c in chunks] == list(range(0, 40, chunk_size))
        assert np.array_equal(np.concatenate([images_of(c) for c in chunks]), whole)


def test_class_labels_and_truncation_reach_the_conditional_generator(stub):
    one_class = stub.Generate(generator_pb2.GenerateRequest(
        model=model(CONDITIONAL), count=8, sampling=generator_pb2.Sampling(seed=1, labels=[3], truncation=0.5)
    ))
    assert list(one_class.labels) == [3] * 8 and np.abs(latents_of(one_class)).max() <= 0.5
    per_image = stub.Generate(generator_pb2.GenerateRequest(
        model=model(CONDITIONAL), count=3, sampling=generator_pb2.Sampling(seed=1, labels=[0, 1, 2])
    ))
    assert list(per_image.labels) == [0, 1, 2]
    stream = list(stub.GenerateStream(generator_pb2.GenerateStreamRequest(
        model=model(CONDITIONAL), count=5, sampling=generator_pb2.Sampling(seed=1, labels=[7])
    )))
    assert [label for chunk in stream for label in chunk.labels] == [7] * 5


def test_explicit_latents_give_the_images_of_the_seed_they_came_from(stub):
    drawn = stub.Generate(generator_pb2.GenerateRequest(model=model(UNCONDITIONAL), count=4, sampling=generator_pb2.Sampling(seed=9)))
    again = stub.Generate(generator_pb2.GenerateRequest(model=model(UNCONDITIONAL), latents=drawn.latents))
    assert np.array_equal(images_of(again), images_of(drawn))


def test_latent_arithmetic_through_encode_and_generate_on_the_vae(gateway, stub, mnist):
    with gateway.channel() as channel:
        encoded = encoder_pb2_grpc.EncoderStub(channel).Encode(encoder_pb2.EncodeRequest(
            model=model("conv_vae"), images=common_pb2.Images(tensor=float_tensor(mnist.test.images[:2, None]))
        ))
    codes = np.frombuffer(encoded.codes.data, "<f4").reshape(encoded.codes.shape)
    decoded = images_of(stub.Generate(generator_pb2.GenerateRequest(model=model("conv_vae"), latents=float_tensor(codes))))
    # the VAE reconstructs what it encoded: closer to its own input than to the other image
    for i in range(2):
        errors = [np.abs(decoded[i] - mnist.test.images[j]).mean() for j in range(2)]
        assert errors[i] < errors[1 - i]
    mixed = stub.Generate(generator_pb2.GenerateRequest(model=model("conv_vae"), latents=float_tensor(codes.mean(0, keepdims=True))))
    assert images_of(mixed).shape == (1, 28, 28)


def test_interpolation_between_seeds_runs_from_one_sample_to_the_other(stub):
    ends = [images_of(stub.Generate(generator_pb2.GenerateRequest(
        model=model(UNCONDITIONAL), count=1, sampling=generator_pb2.Sampling(seed=seed)
    )))[0] for seed in (1, 2)]
    for method in (generator_pb2.INTERPOLATION_LINEAR, generator_pb2.INTERPOLATION_SPHERICAL):
        path = images_of(stub.Interpolate(generator_pb2.InterpolateRequest(
            model=model(UNCONDITIONAL), seeds=generator_pb2.SeedPair(start=1, end=2), steps=5, method=method
        )))
        assert path.shape == (5, 28, 28)
        np.testing.assert_allclose(path[0], ends[0], atol=1e-5)
        np.testing.assert_allclose(path[-1], ends[1], atol=1e-5)


def test_png_output_decodes_to_the_tensor_output(stub):
    request = dict(model=model(UNCONDITIONAL), count=3, sampling=generator_pb2.Sampling(seed=4))
    as_tensor = images_of(stub.Generate(generator_pb2.GenerateRequest(**request)))
    files = stub.Generate(generator_pb2.GenerateRequest(format=common_pb2.IMAGE_FORMAT_PNG, **request)).png
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(data))) for data in files])
    assert decoded.shape == (3, 28, 28) and decoded.dtype == np.uint8
    assert np.abs(decoded / 255 - as_tensor).max() <= 0.5 / 255 + 1e-6


def sampling(**fields) -> generator_pb2.Sampling:
    return generator_pb2.Sampling(**fields)


BAD_REQUESTS = {
    "count over the limit": (
        "Generate", generator_pb2.GenerateRequest(model=model(UNCONDITIONAL), count=257), grpc.StatusCode.RESOURCE_EXHAUSTED, "count"),
    "no count": ("Generate", generator_pb2.GenerateRequest(model=model(UNCONDITIONAL)), grpc.StatusCode.INVALID_ARGUMENT, "count"),
    "unknown class": (
        "Generate", generator_pb2.GenerateRequest(model=model(CONDITIONAL), count=1, sampling=sampling(labels=[10])),
        grpc.StatusCode.INVALID_ARGUMENT, "sampling.labels[0]"),
    "label for an unconditional model": (
        "Generate", generator_pb2.GenerateRequest(model=model(UNCONDITIONAL), count=1, sampling=sampling(labels=[1])),
        grpc.StatusCode.INVALID_ARGUMENT, "sampling.labels"),
    "wrong number of labels": (
        "Generate", generator_pb2.GenerateRequest(model=model(CONDITIONAL), count=3, sampling=sampling(labels=[1, 2])),
        grpc.StatusCode.INVALID_ARGUMENT, "sampling.labels"),
    "latent of the wrong size": (
        "Generate", generator_pb2.GenerateRequest(model=model(UNCONDITIONAL), latents=float_tensor(np.zeros((2, 5)))),
        grpc.StatusCode.INVALID_ARGUMENT, "latents.shape"),
    "NaN latent": (
        "Generate", generator_pb2.GenerateRequest(model=model(UNCONDITIONAL), latents=float_tensor(np.full((1, 64), np.nan))),
        grpc.StatusCode.INVALID_ARGUMENT, "latents.data"),
    "latent bytes short of the shape": (
        "Generate", generator_pb2.GenerateRequest(
            model=model(UNCONDITIONAL), latents=common_pb2.Tensor(shape=[1, 64], dtype=common_pb2.DATA_TYPE_FLOAT32, data=b"\0" * 8)),
        grpc.StatusCode.INVALID_ARGUMENT, "latents.data"),
    "truncation out of range": (
        "Generate", generator_pb2.GenerateRequest(model=model(UNCONDITIONAL), count=1, sampling=sampling(truncation=0.0)),
        grpc.StatusCode.INVALID_ARGUMENT, "sampling.truncation"),
    "negative start index": (
        "Generate", generator_pb2.GenerateRequest(model=model(UNCONDITIONAL), count=1, sampling=sampling(start_index=-1)),
        grpc.StatusCode.INVALID_ARGUMENT, "sampling.start_index"),
    "unknown model": ("Generate", generator_pb2.GenerateRequest(model=model("nope"), count=1), grpc.StatusCode.NOT_FOUND, "model.name"),
    "model that does not generate": (
        "Generate", generator_pb2.GenerateRequest(model=model("autoencoder"), count=1), grpc.StatusCode.INVALID_ARGUMENT, "model.name"),
    "unknown version": (
        "Generate", generator_pb2.GenerateRequest(model=model(UNCONDITIONAL, 99), count=1), grpc.StatusCode.NOT_FOUND, "model.version"),
    "unknown format": (
        "Generate", generator_pb2.GenerateRequest(model=model(UNCONDITIONAL), count=1, format=9), grpc.StatusCode.INVALID_ARGUMENT, "format"),
    "one interpolation step": (
        "Interpolate", generator_pb2.InterpolateRequest(model=model(UNCONDITIONAL), seeds=generator_pb2.SeedPair(start=1, end=2), steps=1),
        grpc.StatusCode.INVALID_ARGUMENT, "steps"),
    "no interpolation endpoints": (
        "Interpolate", generator_pb2.InterpolateRequest(model=model(UNCONDITIONAL), steps=3), grpc.StatusCode.INVALID_ARGUMENT, "endpoints"),
    "three latent endpoints": (
        "Interpolate", generator_pb2.InterpolateRequest(model=model(UNCONDITIONAL), latents=float_tensor(np.zeros((3, 64))), steps=3),
        grpc.StatusCode.INVALID_ARGUMENT, "latents.shape"),
    "stream over the job limit": (
        "GenerateStream", generator_pb2.GenerateStreamRequest(model=model(UNCONDITIONAL), count=10**8),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "count"),
    "stream chunk over the limit": (
        "GenerateStream", generator_pb2.GenerateStreamRequest(model=model(UNCONDITIONAL), count=10, chunk_size=1000),
        grpc.StatusCode.RESOURCE_EXHAUSTED, "chunk_size"),
    "stream with two labels": (
        "GenerateStream", generator_pb2.GenerateStreamRequest(model=model(CONDITIONAL), count=10, sampling=sampling(labels=[1, 2])),
        grpc.StatusCode.INVALID_ARGUMENT, "sampling.labels"),
    "stream with an unknown class": (
        "GenerateStream", generator_pb2.GenerateStreamRequest(model=model(CONDITIONAL), count=10, sampling=sampling(labels=[-1])),
        grpc.StatusCode.INVALID_ARGUMENT, "sampling.labels[0]"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_a_precise_status(stub, case):
    method, request, code, field = BAD_REQUESTS[case]
    call = getattr(stub, method)
    with pytest.raises(grpc.RpcError) as raised:
        result = call(request)
        if method == "GenerateStream":
            list(result)
    error = raised.value
    assert error.code() == code, error.details()
    assert field in error.details() or code != grpc.StatusCode.INVALID_ARGUMENT
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        detail = error_details_pb2.BadRequest()
        rpc_status.from_call(error).details[0].Unpack(detail)
        assert detail.field_violations[0].field == field
    # the server still answers
    assert stub.Generate(generator_pb2.GenerateRequest(model=model(UNCONDITIONAL), count=1)).images.shape == [1, 28, 28]


def _inflight(gateway) -> int:
    return gateway.server.inference.inflight.total()


def test_a_cancelled_stream_stops_generating(gateway, stub):
    stream = stub.GenerateStream(generator_pb2.GenerateStreamRequest(model=model(UNCONDITIONAL), count=1_000_000, chunk_size=16))
    first = next(stream)
    assert first.start_index == 0
    stream.cancel()
    wait_for(lambda: _inflight(gateway) == 0, timeout=5)
    time.sleep(0.5)  # and nothing starts again
    assert _inflight(gateway) == 0


def test_a_stream_past_its_deadline_ends_with_deadline_exceeded(gateway, stub):
    stream = stub.GenerateStream(
        generator_pb2.GenerateStreamRequest(model=model(UNCONDITIONAL), count=1_000_000, chunk_size=16), timeout=1.0
    )
    with pytest.raises(grpc.RpcError) as raised:
        for _ in stream:
            pass
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: _inflight(gateway) == 0, timeout=5)


def test_interpolation_ends_at_the_endpoints():
    a, b = sample_latents(1, 0, 2, 64)
    for spherical in (False, True):
        path = interpolate(a, b, 9, spherical)
        assert path.shape == (9, 64)
        np.testing.assert_allclose(path[0], a, atol=1e-6)
        np.testing.assert_allclose(path[-1], b, atol=1e-6)


def test_spherical_interpolation_keeps_the_norm_of_gaussian_latents():
    a, b = sample_latents(2, 0, 2, 256)
    middle_linear, middle_spherical = interpolate(a, b, 3, False)[1], interpolate(a, b, 3, True)[1]
    typical = np.sqrt(256)
    assert abs(np.linalg.norm(middle_spherical) - typical) < 0.1 * typical
    assert np.linalg.norm(middle_linear) < 0.8 * typical  # the straight path cuts through the low-norm middle


# Issue 31: inputs a fuzzer found (benchmarks/fuzz.py) that ended in INTERNAL, and a contract slip.
def test_sample_indices_whose_last_passes_2_to_the_63_are_invalid_argument(stub):
    last = 2**63 - 1
    calls = [
        lambda: stub.Generate(generator_pb2.GenerateRequest(model=model(CONDITIONAL), count=2, sampling=generator_pb2.Sampling(start_index=last))),
        lambda: list(stub.GenerateStream(generator_pb2.GenerateStreamRequest(model=model(CONDITIONAL), count=2, sampling=generator_pb2.Sampling(start_index=last)))),
        lambda: stub.Generate(generator_pb2.GenerateRequest(
            model=model(CONDITIONAL), latents=float_tensor(np.zeros((2, 64))), sampling=generator_pb2.Sampling(start_index=last))),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and raised.value.details().startswith("sampling.start_index:")
    sample = stub.Generate(generator_pb2.GenerateRequest(model=model(CONDITIONAL), count=1, sampling=generator_pb2.Sampling(start_index=last)))
    assert list(sample.labels) == [last % 10]  # index 2**63 - 1 itself still serves


@pytest.mark.parametrize("shape, field", [
    ([2**32, 2**32], "latents.data"),  # the product wraps to 0 in int64, as the empty data does
    ([0, 2**62], "latents.shape"),  # empty, yet numpy refuses to shape it
    ([1] * 33, "latents.shape"),  # more dims than numpy has
    ([-2, -32], "latents.shape"),  # negative sizes whose product is right
])
def test_latent_shapes_numpy_cannot_make_are_invalid_argument(stub, shape, field):
    data = b"" if 0 in shape or max(shape) > 2**31 else bytes(4 * abs(int(np.prod(shape))))
    request = generator_pb2.GenerateRequest(model=model(UNCONDITIONAL), latents=common_pb2.Tensor(shape=shape, dtype=common_pb2.DATA_TYPE_FLOAT32, data=data))
    with pytest.raises(grpc.RpcError) as raised:
        stub.Generate(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and raised.value.details().startswith(field + ":"), raised.value.details()


@pytest.mark.parametrize("name", ["acgan", "dcgan", "wgan_gp", "conv_vae"])
def test_generated_images_lie_in_0_1_and_classify_takes_them(gateway, stub, name):
    from latentserve.v1 import classifier_pb2, classifier_pb2_grpc

    images = images_of(stub.Generate(generator_pb2.GenerateRequest(model=model(name), count=256, sampling=generator_pb2.Sampling(seed=0))))
    assert images.min() >= 0 and images.max() <= 1
    with gateway.channel() as channel:
        request = classifier_pb2.ClassifyRequest(images=common_pb2.Images(tensor=float_tensor(images)))
        assert len(classifier_pb2_grpc.ClassifierStub(channel).Classify(request).labels) == 256
