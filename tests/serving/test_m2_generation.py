"""M2 as a conditional generator, end to end over real gRPC on loopback with a tiny M2 trained and
exported here: handwriting styles (one class, varying z) through Generate, and analogies (z of an image
through q(z|x,y), drawn with every class) through Encode and Generate."""
import numpy as np
import pytest

from latentserve import repository
from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, generator_pb2, generator_pb2_grpc
from tests.conftest import RunningGateway, onnx_session, repository_with, tensor_batch

pytestmark = pytest.mark.slow  # trains and exports a tiny M2

TINY = {"hidden": 32, "latent_dim": 4, "epochs": 1, "labels_per_class": 2}
M2 = common_pb2.ModelRef(name="m2")


@pytest.fixture(scope="module")
def repository_root(tmp_path_factory, small_mnist):
    return repository_with(tmp_path_factory.mktemp("repository"), tmp_path_factory.mktemp("run"), small_mnist, "m2", TINY,
                           ("autoencoder_encoder", "lenet_classifier"))


@pytest.fixture(scope="module")
def channel(tmp_path_factory, repository_root):
    gateway = RunningGateway(model_repository=repository_root, data_dir=tmp_path_factory.mktemp("data"), gallery="none").start()
    with gateway.channel() as channel:
        yield channel
    gateway.stop()


def _floats(tensor) -> np.ndarray:
    return np.frombuffer(tensor.data, "<f4").reshape(tensor.shape)


def test_m2_exports_a_classifier_a_generator_and_a_style_encoder_of_one_version(repository_root):
    entries = repository.read_repository(repository_root)
    assert {name: (entries[name].capability, entries[name].versions) for name in ("m2_classifier", "m2_generator", "m2_encoder")} == {
        "m2_classifier": ("classify", (1,)), "m2_generator": ("generate", (1,)), "m2_encoder": ("encode", (1,)),
    }
    assert entries["m2_generator"].classes == 10 and entries["m2_generator"].latent_dim == 4


def test_styles_one_class_with_varying_z(channel, repository_root):
    response = generator_pb2_grpc.GeneratorStub(channel).Generate(generator_pb2.GenerateRequest(
        model=M2, count=6, sampling=generator_pb2.Sampling(seed=3, labels=[7])))
    assert list(response.labels) == [7] * 6
    images = _floats(response.images)
    session = onnx_session(repository.read_repository(repository_root)["m2_generator"])
    want, = session.run(["image"], {"latent": _floats(response.latents), "label": np.full((6, 1), 7, np.int64)})
    np.testing.assert_allclose(images, want[:, 0], atol=1e-6)
    assert images.min() >= 0 and images.max() <= 1 and not np.allclose(images[0], images[1])


def test_analogies_one_style_drawn_with_every_class(channel, repository_root, mnist):
    digit = mnist.test.images[:1]
    encoded = encoder_pb2_grpc.EncoderStub(channel).Encode(encoder_pb2.EncodeRequest(model=M2, images=tensor_batch(digit)))
    style = _floats(encoded.codes)
    entries = repository.read_repository(repository_root)
    want_style, _ = onnx_session(entries["m2_encoder"]).run(["code", "binary_code"], {"image": digit[:, None]})
    np.testing.assert_allclose(style, want_style, atol=1e-6)
    latents = np.repeat(style, 10, axis=0)
    drawn = generator_pb2_grpc.GeneratorStub(channel).Generate(generator_pb2.GenerateRequest(
        model=M2, latents=common_pb2.Tensor(shape=latents.shape, dtype=common_pb2.DATA_TYPE_FLOAT32, data=latents.tobytes()),
        sampling=generator_pb2.Sampling(labels=list(range(10)))))
    assert list(drawn.labels) == list(range(10))
    images = _floats(drawn.images)
    want, = onnx_session(entries["m2_generator"]).run(["image"], {"latent": latents, "label": np.arange(10, dtype=np.int64)[:, None]})
    np.testing.assert_allclose(images, want[:, 0], atol=1e-6)
    assert len({images[i].tobytes() for i in range(10)}) == 10  # the class changes the drawing
