"""Sampling an RBM by a Gibbs chain through Generator, end to end over real gRPC on loopback, with a tiny
RBM trained and exported here (the shipped one's quality: tests/test_shipped_models.py)."""
import grpc
import numpy as np
import pytest

from latentserve import repository
from latentserve.latents import sample_latents
from latentserve.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from tests.conftest import RunningGateway, assert_refused, onnx_session, replay_gibbs_chain, repository_with, tensor_batch

HIDDEN, STEPS = 16, 4
TINY = {"hidden": HIDDEN, "cd_steps": 1, "epochs": 5, "batch_size": 32, "learning_rate": 0.1, "ais_runs": 10, "ais_betas": (10, 50, 100)}
RBM = common_pb2.ModelRef(name="rbm")


@pytest.fixture(scope="module")
def repository_root(tmp_path_factory, small_mnist):
    return repository_with(tmp_path_factory.mktemp("repository"), tmp_path_factory.mktemp("run"), small_mnist, "rbm", TINY, ("autoencoder_encoder",))


@pytest.fixture(scope="module")
def stub(tmp_path_factory, repository_root):
    gateway = RunningGateway(
        model_repository=repository_root, data_dir=tmp_path_factory.mktemp("data"), gallery="none",
        gibbs_steps=STEPS, max_sequential_sampling_images=3,
    ).start()
    with gateway.channel() as channel:
        yield generator_pb2_grpc.GeneratorStub(channel)
    gateway.stop()


@pytest.fixture(scope="module")
def session(repository_root):
    return onnx_session(repository.read_repository(repository_root)["rbm_gibbs"])


def _images(response) -> np.ndarray:
    return np.frombuffer(response.images.data, "<f4").reshape(response.images.shape)


def _replay(session, latents: np.ndarray, seed: int) -> np.ndarray:
    return replay_gibbs_chain(session, latents, seed, STEPS, HIDDEN)[:, 0]


def test_a_sample_is_the_chain_its_seed_and_index_draw_however_the_job_is_split(stub, session):
    def generate(start: int, count: int):
        return stub.Generate(generator_pb2.GenerateRequest(model=RBM, count=count, sampling=generator_pb2.Sampling(seed=5, start_index=start)))

    response = generate(0, 3)
    whole = _images(response)
    np.testing.assert_array_equal(np.concatenate([_images(generate(0, 1)), _images(generate(1, 2))]), whole)
    chunks = stub.GenerateStream(generator_pb2.GenerateStreamRequest(model=RBM, count=3, chunk_size=2, sampling=generator_pb2.Sampling(seed=5)))
    np.testing.assert_array_equal(np.concatenate([_images(chunk) for chunk in chunks]), whole)
    latents = sample_latents(5, 0, 3, 784)
    np.testing.assert_array_equal(np.frombuffer(response.latents.data, "<f4").reshape(3, 784), latents)
    np.testing.assert_array_equal(whole, _replay(session, latents, 5))
    other_seed = stub.Generate(generator_pb2.GenerateRequest(model=RBM, count=3, sampling=generator_pb2.Sampling(seed=6)))
    assert not np.array_equal(whole, _images(other_seed))


def test_explicit_latents_set_where_the_chain_starts(stub, session, mnist):
    digits = mnist.test.images[[0, 1]].reshape(2, 784) > 0.5
    latents = np.where(digits, -1.0, 1.0).astype(np.float32)  # chains that start at two test digits
    assert not np.array_equal(_replay(session, latents, 5), _replay(session, latents[::-1], 5))  # the start matters to this RBM
    given = stub.Generate(generator_pb2.GenerateRequest(model=RBM, latents=tensor_batch(latents).tensor, sampling=generator_pb2.Sampling(seed=5)))
    np.testing.assert_array_equal(_images(given), _replay(session, latents, 5))


def test_chains_past_their_limit_truncation_and_interpolation_are_refused(stub):
    with pytest.raises(grpc.RpcError) as raised:
        stub.Generate(generator_pb2.GenerateRequest(model=RBM, count=4))
    assert_refused(raised.value, grpc.StatusCode.RESOURCE_EXHAUSTED, "count")
    chunks = list(stub.GenerateStream(generator_pb2.GenerateStreamRequest(model=RBM, count=4, chunk_size=10)))
    assert [chunk.start_index for chunk in chunks] == [0, 3]
    with pytest.raises(grpc.RpcError) as raised:
        stub.Generate(generator_pb2.GenerateRequest(model=RBM, count=1, sampling=generator_pb2.Sampling(truncation=1.0)))
    assert_refused(raised.value, grpc.StatusCode.INVALID_ARGUMENT, "sampling.truncation")
    with pytest.raises(grpc.RpcError) as raised:
        stub.Interpolate(generator_pb2.InterpolateRequest(model=RBM, steps=3, seeds=generator_pb2.SeedPair(start=0, end=1)))
    assert_refused(raised.value, grpc.StatusCode.INVALID_ARGUMENT, "model.name")
