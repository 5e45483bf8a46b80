"""The Density service, pixel-by-pixel sampling through Generator and Classify's and Translate's
`check_distribution`, end to end over real gRPC on loopback, with a tiny PixelCNN trained and exported
here (the shipped one's quality: tests/test_shipped_models.py)."""
import shutil

import grpc
import numpy as np
import pytest
from scipy.special import expit, ndtr

from latentserve import repository
from latentserve.density import binarise, complexity_bits, ood_scores
from latentserve.latents import sample_latents
from latentserve.v1 import (
    classifier_pb2, classifier_pb2_grpc, common_pb2, density_pb2, density_pb2_grpc, generator_pb2, generator_pb2_grpc,
    translator_pb2, translator_pb2_grpc,
)
from serving.settings import Settings
from tests.conftest import MODEL_REPOSITORY, RunningGateway, assert_refused, onnx_session, repository_with, tensor_batch

TINY = {"channels": 4, "layers": 1, "first_kernel": 3, "epochs": 1, "batch_size": 128}
DEFAULT_CLASSIFIER = Settings().default_classifier
COPIED = (f"{DEFAULT_CLASSIFIER}_classifier", "pix2pix_edges2digit", "autoencoder_encoder")  # what check_distribution rides on; the index model


@pytest.fixture(scope="module")
def repository_root(tmp_path_factory, small_mnist):
    return repository_with(tmp_path_factory.mktemp("repository"), tmp_path_factory.mktemp("run"), small_mnist, "pixelcnn", TINY, COPIED)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, repository_root):
    running = RunningGateway(
        model_repository=repository_root, data_dir=tmp_path_factory.mktemp("data"), gallery="none", max_batch_images=64,
        max_sequential_sampling_images=3,
    ).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def channel(gateway):
    with gateway.channel() as channel:
        yield channel


@pytest.fixture(scope="module")
def entry(repository_root):
    return repository.read_repository(repository_root)["pixelcnn_density"]


@pytest.fixture(scope="module")
def session(entry):
    return onnx_session(entry)


def test_score_is_the_graphs_likelihood_of_the_binarised_images_and_the_corrected_score(channel, session, entry, mnist):
    images = mnist.test.images[:20]
    response = density_pb2_grpc.DensityStub(channel).Score(density_pb2.ScoreRequest(images=tensor_batch(images)))
    binary = binarise(images[:, None])
    (want,) = session.run(["log_likelihood"], {"image": binary})
    got = np.asarray(response.log_likelihoods)
    np.testing.assert_allclose(got, want[:, 0], rtol=1e-5)
    np.testing.assert_allclose(response.bits_per_dim, -got / np.log(2) / 784, rtol=1e-5)
    scores = ood_scores(want[:, 0], complexity_bits(binary))
    distribution = response.distribution
    np.testing.assert_allclose(distribution.scores, scores, rtol=1e-5)
    threshold = entry.cards[entry.versions[0]]["metrics"]["ood_threshold"]
    assert distribution.threshold == pytest.approx(threshold)
    assert list(distribution.out_of_distribution) == (np.asarray(distribution.scores) > distribution.threshold).tolist()
    assert response.model == distribution.model == common_pb2.ModelRef(name="pixelcnn", version=entry.versions[0])


def test_classify_and_translate_return_the_verdict_when_asked(channel, mnist):
    images = mnist.test.images[:8]
    scored = density_pb2_grpc.DensityStub(channel).Score(density_pb2.ScoreRequest(images=tensor_batch(images)))
    classifier = classifier_pb2_grpc.ClassifierStub(channel)
    plain = classifier.Classify(classifier_pb2.ClassifyRequest(images=tensor_batch(images)))
    checked = classifier.Classify(classifier_pb2.ClassifyRequest(images=tensor_batch(images), check_distribution=True))
    assert not plain.HasField("distribution")
    assert list(checked.labels) == list(plain.labels)
    assert checked.distribution == scored.distribution
    translated = translator_pb2_grpc.TranslatorStub(channel).Translate(translator_pb2.TranslateRequest(
        direction="edges2digit", images=tensor_batch(images), check_distribution=True
    ))
    assert translated.distribution == scored.distribution


def test_sampling_pixel_by_pixel_follows_the_graph_and_is_the_same_however_the_job_is_split(channel, session):
    stub = generator_pb2_grpc.GeneratorStub(channel)

    def generate(start: int, count: int) -> np.ndarray:
        response = stub.Generate(generator_pb2.GenerateRequest(
            model=common_pb2.ModelRef(name="pixelcnn"), count=count, sampling=generator_pb2.Sampling(seed=5, start_index=start)
        ))
        assert list(response.latents.shape) == [count, 784]
        return np.frombuffer(response.images.data, "<f4").reshape(response.images.shape)

    whole = generate(0, 3)
    np.testing.assert_array_equal(np.concatenate([generate(0, 1), generate(1, 2)]), whole)
    assert set(np.unique(whole)) <= {0.0, 1.0}
    # the loop, replayed: each pixel on where its uniform draw falls below the graph's probability
    uniforms = ndtr(sample_latents(5, 0, 3, 784)).reshape(3, 1, 28, 28)
    (logits,) = session.run(["pixel_logits"], {"image": whole[:, None]})
    on = uniforms < expit(logits)  # a pixel's logit depends only on the pixels before it, all final
    np.testing.assert_array_equal(on[:, 0], whole == 1)


@pytest.mark.parametrize("request_, code, field", [
    (density_pb2.ScoreRequest(model=common_pb2.ModelRef(name="nope"), images=tensor_batch(np.zeros((1, 28, 28)))),
     grpc.StatusCode.NOT_FOUND, "model.name"),
    (density_pb2.ScoreRequest(model=common_pb2.ModelRef(name=DEFAULT_CLASSIFIER), images=tensor_batch(np.zeros((1, 28, 28)))),
     grpc.StatusCode.INVALID_ARGUMENT, "model.name"),
    (density_pb2.ScoreRequest(model=common_pb2.ModelRef(version=99), images=tensor_batch(np.zeros((1, 28, 28)))),
     grpc.StatusCode.NOT_FOUND, "model.version"),
    (density_pb2.ScoreRequest(images=tensor_batch(np.zeros((65, 28, 28)))), grpc.StatusCode.RESOURCE_EXHAUSTED, "images"),
    (density_pb2.ScoreRequest(images=common_pb2.Images(encoded=common_pb2.EncodedImages(images=[b"not an image"]))),
     grpc.StatusCode.INVALID_ARGUMENT, "images.encoded.images[0]"),
    (density_pb2.ScoreRequest(images=tensor_batch(np.full((1, 28, 28), np.nan))), grpc.StatusCode.INVALID_ARGUMENT, "images.tensor.data"),
])
def test_bad_score_requests_get_a_precise_status(channel, request_, code, field):
    with pytest.raises(grpc.RpcError) as raised:
        density_pb2_grpc.DensityStub(channel).Score(request_)
    assert_refused(raised.value, code, field)


def test_pixel_sampling_past_its_limit_is_refused_and_streams_come_in_chunks_within_it(channel):
    stub = generator_pb2_grpc.GeneratorStub(channel)
    with pytest.raises(grpc.RpcError) as raised:
        stub.Generate(generator_pb2.GenerateRequest(model=common_pb2.ModelRef(name="pixelcnn"), count=4))
    assert_refused(raised.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "count")
    chunks = list(stub.GenerateStream(generator_pb2.GenerateStreamRequest(model=common_pb2.ModelRef(name="pixelcnn"), count=4, chunk_size=10)))
    assert [chunk.start_index for chunk in chunks] == [0, 3] and [chunk.images.shape[0] for chunk in chunks] == [3, 1]


def test_interpolating_a_model_without_a_latent_space_is_invalid_argument(channel):
    with pytest.raises(grpc.RpcError) as raised:
        generator_pb2_grpc.GeneratorStub(channel).Interpolate(generator_pb2.InterpolateRequest(
            model=common_pb2.ModelRef(name="pixelcnn"), steps=3, seeds=generator_pb2.SeedPair(start=0, end=1)
        ))
    assert_refused(raised.value, grpc.StatusCode.INVALID_ARGUMENT, "model.name")


def test_check_distribution_without_a_density_model_is_unavailable_or_not_found(tmp_path, mnist):
    root = tmp_path / "repository"
    for name in (f"{DEFAULT_CLASSIFIER}_classifier", "autoencoder_encoder"):
        shutil.copytree(MODEL_REPOSITORY / name, root / name)
    gateway = RunningGateway(model_repository=root, data_dir=tmp_path / "data", gallery="none").start()
    try:
        with gateway.channel() as channel, pytest.raises(grpc.RpcError) as raised:
            classifier_pb2_grpc.ClassifierStub(channel).Classify(
                classifier_pb2.ClassifyRequest(images=tensor_batch(mnist.test.images[:1]), check_distribution=True)
            )
    finally:
        gateway.stop()
    assert_refused(raised.value, grpc.StatusCode.NOT_FOUND, "check_distribution.name")
