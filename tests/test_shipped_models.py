"""The committed model repository: complete versions, honest cards, and a retrieval quality floor."""
import numpy as np
import pytest

from serving import repository
from serving.mnist import BUNDLED_SHA256
from tests.conftest import MODEL_REPOSITORY
from training import retrieval
from training.benchmark_retrieval import encode_with_onnx

ENTRIES = repository.read_repository(MODEL_REPOSITORY)
REPOSITORY_BUDGET_BYTES = 50 * 1024 * 1024


def test_the_service_ships_its_encoders():
    assert {"autoencoder_encoder", "vae_encoder"} <= set(ENTRIES)
    size = sum(p.stat().st_size for p in MODEL_REPOSITORY.rglob("*") if p.is_file())
    assert size < REPOSITORY_BUDGET_BYTES


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_every_served_version_is_complete_and_carded(name):
    entry = ENTRIES[name]
    assert entry.versions
    for version in entry.versions:
        files = {p.name for p in entry.version_path(version).iterdir()}
        assert {"model.onnx", "model.pt", "model.py", "card.json"} <= files
        card = entry.cards[version]
        assert card["data"]["sha256"] == BUNDLED_SHA256
        assert card["version"] == version and card["model"] == entry.model
        assert all(v <= card["parity"]["float_tolerance"] for k, v in card["parity"]["real"].items() if k.endswith(".code"))
        assert card["source_commit"] != "unknown"


@pytest.fixture(scope="module")
def protocol(mnist):
    return retrieval.protocol(mnist)


def _scores(distances, protocol) -> float:
    return retrieval.retrieval_scores(distances, protocol.query_labels, protocol.gallery_labels)["map"]


def _encode(entry, images: np.ndarray):
    return encode_with_onnx(entry.version_path(entry.versions[0]) / repository.ONNX_FILE, images)


def test_the_autoencoder_beats_raw_pixels_and_pca_on_retrieval(mnist, protocol):
    entry = ENTRIES["autoencoder_encoder"]
    (query_code, query_bits), (gallery_code, gallery_bits) = _encode(entry, protocol.queries), _encode(entry, protocol.gallery)
    code_map = _scores(retrieval.l2_distances(query_code, gallery_code), protocol)
    bits_map = _scores(retrieval.hamming_distances(query_bits, gallery_bits), protocol)

    flat = lambda images: images.reshape(len(images), -1)  # noqa: E731
    raw_map = _scores(retrieval.l2_distances(flat(protocol.queries), flat(protocol.gallery)), protocol)
    mean, directions = retrieval.pca_projection(mnist.train.images, query_code.shape[1])
    pca = lambda images: (flat(images) - mean) @ directions  # noqa: E731
    pca_map = _scores(retrieval.l2_distances(pca(protocol.queries), pca(protocol.gallery)), protocol)

    assert code_map > max(raw_map, pca_map), (code_map, raw_map, pca_map)
    assert bits_map > 0.40  # the low end of published unsupervised hashing (PCA-ITQ) on this protocol
    card = entry.cards[entry.versions[0]]["metrics"]
    assert abs(card["retrieval_code_map"] - code_map) < 0.005 and abs(card["retrieval_bits_map"] - bits_map) < 0.005
