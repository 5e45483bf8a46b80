"""The Classifier service end to end over real gRPC on loopback, with the shipped classifiers."""
import io
import json

import grpc
import numpy as np
import onnxruntime
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from latentserve.v1 import classifier_pb2, classifier_pb2_grpc, common_pb2
from latentserve import repository
from serving.settings import Settings
from tests.conftest import MODEL_REPOSITORY, RunningGateway, tensor_batch

CLASSIFIER = Settings().default_classifier  # what a request naming no model gets


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    running = RunningGateway(data_dir=tmp_path_factory.mktemp("data"), gallery="none", max_batch_images=64).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(gateway):
    with gateway.channel() as channel:
        yield classifier_pb2_grpc.ClassifierStub(channel)


def png_batch(images: np.ndarray) -> common_pb2.Images:
    files = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray((image * 255).round().astype(np.uint8)).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return common_pb2.Images(encoded=common_pb2.EncodedImages(images=files))


def probabilities_of(response) -> np.ndarray:
    return np.frombuffer(response.probabilities.data, "<f4").reshape(response.probabilities.shape)


def test_classifier_health_is_serving(gateway):
    with gateway.channel() as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="latentserve.v1.Classifier"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_classify_matches_onnxruntime_and_summarises_each_row(stub, mnist):
    images = mnist.test.images[:64]
    response = stub.Classify(classifier_pb2.ClassifyRequest(images=tensor_batch(images)))
    entry = next(e for e in repository.read_repository(MODEL_REPOSITORY).values() if e.model == CLASSIFIER)
    session = onnxruntime.InferenceSession(str(entry.version_path(entry.versions[0]) / repository.ONNX_FILE), providers=["CPUExecutionProvider"])
    (want,) = session.run(["probabilities"], {"image": images[:, None]})
    got = probabilities_of(response)
    assert response.model == common_pb2.ModelRef(name=CLASSIFIER, version=entry.versions[0])
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert list(response.labels) == want.argmax(1).tolist()
    np.testing.assert_allclose(response.confidences, want.max(1), atol=1e-6)
    entropies = -(want * np.log(np.clip(want, 1e-30, None))).sum(1)
    np.testing.assert_allclose(response.entropies, entropies, atol=1e-5)
    assert (np.asarray(response.labels) == mnist.test.labels[:64]).mean() > 0.95


def test_classify_png_files_and_a_named_version(stub, mnist):
    images = mnist.test.images[64:72]
    by_tensor = stub.Classify(classifier_pb2.ClassifyRequest(images=tensor_batch(images)))
    version = max(next(e for e in repository.read_repository(MODEL_REPOSITORY).values() if e.model == CLASSIFIER).versions)
    by_png = stub.Classify(classifier_pb2.ClassifyRequest(
        model=common_pb2.ModelRef(name=CLASSIFIER, version=version), images=png_batch(images)
    ))
    assert by_png.model.version == version
    assert list(by_png.labels) == list(by_tensor.labels)  # PNG rounds to 8 bits: the same decisions
    np.testing.assert_allclose(probabilities_of(by_png), probabilities_of(by_tensor), atol=1e-3)


INVALID, MISSING, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED
GOOD = np.zeros((2, 28, 28), np.float32)
BAD_REQUESTS = {
    "unknown model": (common_pb2.ModelRef(name="nope"), tensor_batch(GOOD), MISSING, "model.name"),
    "model without a classifier": (common_pb2.ModelRef(name="autoencoder"), tensor_batch(GOOD), INVALID, "model.name"),
    "unknown version": (common_pb2.ModelRef(name=CLASSIFIER, version=999), tensor_batch(GOOD), MISSING, "model.version"),
    "empty batch": (None, tensor_batch(np.zeros((0, 28, 28), np.float32)), INVALID, "images"),
    "no images": (None, common_pb2.Images(), INVALID, "images"),
    "wrong size": (None, tensor_batch(np.zeros((2, 14, 14), np.float32)), INVALID, "images.tensor.shape"),
    "over the batch limit": (None, tensor_batch(np.zeros((65, 28, 28), np.float32)), EXHAUSTED, "images"),
    "undecodable file": (None, common_pb2.Images(encoded=common_pb2.EncodedImages(images=[b"not an image"])), INVALID, "images.encoded.images[0]"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_a_precise_status(stub, case):
    model, images, code, field = BAD_REQUESTS[case]
    with pytest.raises(grpc.RpcError) as raised:
        stub.Classify(classifier_pb2.ClassifyRequest(model=model, images=images))
    assert raised.value.code() == code, raised.value.details()
    assert raised.value.details().startswith(field + ":"), raised.value.details()
    assert stub.Classify(classifier_pb2.ClassifyRequest(images=tensor_batch(GOOD))).labels  # still serving


def test_cli_classify_prints_one_line_per_file(gateway, mnist, tmp_path, capsys):
    from latentserve.cli import main

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray((mnist.test.images[i] * 255).round().astype(np.uint8)).save(paths[-1])
    main(["classify", "--target", gateway.target, *map(str, paths), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["image"] for line in lines] == list(map(str, paths))
    assert [line["label"] for line in lines] == mnist.test.labels[:3].tolist()
    assert all(0.1 < line["confidence"] <= 1 and line["entropy"] >= 0 for line in lines)
