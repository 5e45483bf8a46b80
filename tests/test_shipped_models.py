"""The committed model repository: complete versions, honest cards, and a retrieval quality floor."""
import numpy as np
import onnxruntime
import pytest
import torch
from sklearn.metrics import roc_auc_score

from benchmarks import density_quality
from benchmarks.retrieval import encode_with_onnx
from latentserve import repository
from latentserve.datasets import BUNDLED_SHA256
from latentserve.latents import sample_latents
from latentserve.quality import FeatureNetwork, classifier_score, evaluate_entry, real_floor
from serving.settings import Settings
from tests.conftest import MODEL_REPOSITORY, onnx_session, replay_gibbs_chain
from training import retrieval

ENTRIES = repository.read_repository(MODEL_REPOSITORY)
REPOSITORY_BUDGET_BYTES = 100 * 1000 * 1000  # the guide's limit


def test_the_service_ships_each_family_of_models_within_the_budget():
    assert {
        "autoencoder_encoder", "vae_encoder", "lenet_classifier", "conv_vae_encoder", "conv_vae_decoder",
        "dcgan_generator", "wgan_gp_generator", "wgan_generator", "acgan_generator", "m2_classifier", "m2_generator", "m2_encoder",
        "pix2pix_edges2digit", "cyclegan_mnist2uci", "cyclegan_uci2mnist", "pixelcnn_density", "deep_autoencoder_encoder",
        "binary_autoencoder_encoder", "rbm_gibbs", "ssgan_classifier",
    } <= set(ENTRIES)
    size = sum(p.stat().st_size for p in MODEL_REPOSITORY.rglob("*") if p.is_file() and "__pycache__" not in p.parts)  # what git holds
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
        float_outputs = [t.name for t in entry.outputs if t.dtype == np.float32]
        for inputs in ("real", "random"):
            assert all(card["parity"][inputs][f"{runtime}.{name}"] <= card["parity"]["float_tolerance"]
                       for runtime in ("onnx", "torchscript") for name in float_outputs)
        assert card["source_commit"] != "unknown"


@pytest.mark.parametrize("name", sorted(n for n, e in ENTRIES.items() if e.capability == "generate" and any(t.name == "latent" for t in e.inputs)))
def test_every_latent_generator_card_holds_diversity_beside_real_data(name):
    metrics = ENTRIES[name].cards[ENTRIES[name].versions[0]]["metrics"]
    for measure in ("ms_ssim", "swd_28", "swd_14", "swd_7"):
        assert metrics[measure] > 0 and metrics[f"real_{measure}"] > 0, measure
    # No shipped generator copies its training images: a set that copies nothing has about 1% of its images
    # nearer than real digits' 1st percentile (0.1% sampling spread at 10,000 samples; dcgan v6 1.07%)
    assert metrics["nearer_than_real_1st_percentile"] < 0.02


@pytest.fixture(scope="module")
def protocol(mnist):
    return retrieval.protocol(mnist)


def _scores(distances, protocol) -> float:
    return retrieval.retrieval_scores(distances, protocol.query_labels, protocol.gallery_labels)["map"]


def _encode(entry, images: np.ndarray):
    return encode_with_onnx(entry.version_path(entry.versions[0]) / repository.ONNX_FILE, images)


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_deep_autoencoder_reconstructs_far_better_than_pca_and_its_codes_retrieve(protocol):
    entry = ENTRIES["deep_autoencoder_encoder"]
    card = entry.cards[entry.versions[0]]
    assert card["config"]["hidden"] == [1000, 500, 250, 30] and card["config"]["pretrained"]
    metrics = card["metrics"]  # the decoder is not served; its error was measured at export (measured 2.96 vs PCA's 13.76)
    assert metrics["pca_test_squared_error"] / metrics["test_squared_error"] >= 3
    (query_code, _), (gallery_code, _) = _encode(entry, protocol.queries), _encode(entry, protocol.gallery)
    code_map = _scores(retrieval.l2_distances(query_code, gallery_code), protocol)
    assert code_map > 0.44 and abs(code_map - metrics["retrieval_code_map"]) < 0.005  # measured 45.55%


@pytest.mark.slow
def test_the_binary_autoencoders_256_bits_retrieve_better_than_the_real_valued_code(protocol):
    entry = ENTRIES["binary_autoencoder_encoder"]
    metrics = entry.cards[entry.versions[0]]["metrics"]
    (_, query_bits), (_, gallery_bits) = _encode(entry, protocol.queries), _encode(entry, protocol.gallery)
    assert query_bits.shape[1] == 256
    bits_map = _scores(retrieval.hamming_distances(query_bits, gallery_bits), protocol)
    real_valued = ENTRIES["autoencoder_encoder"].cards[ENTRIES["autoencoder_encoder"].versions[0]]["metrics"]["retrieval_code_map"]
    assert bits_map > real_valued and abs(bits_map - metrics["retrieval_bits_map"]) < 0.005  # measured 56.75% (the real-valued autoencoder code: 47.72%)


RBM_LOG_LIKELIHOOD_FLOOR = -152.0  # nats; measured -149.70 by AIS on the whole test set


@pytest.mark.slow
def test_the_rbm_keeps_its_likelihood_and_its_gibbs_chains_draw_digits(mnist, features):
    """The card's AIS figure (AIS itself: tests/training/test_rbm.py), and 100 chains of 300 steps run as the
    gateway runs them (serving/generation.py), scored by the feature network."""
    entry = ENTRIES["rbm_gibbs"]
    metrics = entry.cards[entry.versions[0]]["metrics"]
    assert metrics["test_log_likelihood"] >= RBM_LOG_LIKELIHOOD_FLOOR
    assert metrics["test_log_likelihood"] - metrics["test_log_likelihood_low"] < 2  # log Z's upper 3-sigma end is close
    probabilities = replay_gibbs_chain(onnx_session(entry), sample_latents(0, 0, 100, 784), seed=0, steps=300, hidden=500)
    assert classifier_score(features(probabilities)[0]) >= 4.0  # measured 4.87 (a GAN: 9 and more)


NLL_FLOOR = 88.0  # nats; pixelcnn v2 measured 85.43 on the whole test set
AUROC_FLOORS = {  # a little under what the whole sets measured (docs/benchmarks.md); printed digits (0.56) have none: near chance
    "uniform noise": 0.99, "constant": 0.99, "inverted MNIST": 0.99, "MNIST rotated 90 degrees": 0.65, "UCI digits, enlarged": 0.75,
}


@pytest.fixture(scope="module")
def density_session():
    entry = ENTRIES["pixelcnn_density"]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    return entry, onnxruntime.InferenceSession(str(entry.version_path(entry.versions[0]) / repository.ONNX_FILE), options, providers=["CPUExecutionProvider"])


@pytest.mark.slow
def test_the_density_model_keeps_its_likelihood(density_session, mnist):
    entry, session = density_session
    card = entry.cards[entry.versions[0]]
    # the card's data: the test images binarised by sampling (seed 0); its first 1,000 here
    sampled = torch.bernoulli(torch.from_numpy(mnist.test.images[:, None]), generator=torch.Generator().manual_seed(0)).numpy()[:1000]
    nll = -session.run(["log_likelihood"], {"image": sampled})[0].mean()
    assert nll <= NLL_FLOOR and abs(nll - card["metrics"]["test_nll_nats"]) < 3


@pytest.mark.slow
def test_the_out_of_distribution_score_tells_digits_from_what_they_are_not(density_session, mnist):
    """AUROC of 1,000 MNIST test digits against 300 of each other kind (the whole sets: docs/benchmarks.md)."""
    entry, session = density_session
    inside = density_quality.scores(session, mnist.test.images[-1000:])["served"]
    for name, images in density_quality.out_of_distribution_sets(mnist.test.images).items():
        if name not in AUROC_FLOORS:
            continue
        outside = density_quality.scores(session, images[:300])["served"]
        labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
        assert roc_auc_score(labels, np.r_[inside, outside]) >= AUROC_FLOORS[name], name


# Generation: the quality floor of the shipped generators on 2,000 samples (FID against the real floor at
# the same sample count). These guard the shipped versions against regressions, a little under what they
# measured; the targets (classifier score 9, FID 10x the floor, on 10,000 samples) and which
# models meet them are in docs/benchmarks.md.
QUALITY_SAMPLES = 2000
FLOORS = {  # model: (lowest classifier score, highest FID / real floor); measured 9.59 / 1.03, 8.90 / 3.4, 9.74 / 3.7, 4.32 / 86
    "dcgan": (9.4, 1.5),
    "wgan_gp": (8.8, 4.0),
    "acgan": (9.5, 4.5),
    "wgan": (4.0, 95.0),  # weight clipping after 16 epochs: far behind the penalty in the same time (docs/benchmarks.md)
}


@pytest.fixture(scope="module")
def features():
    return FeatureNetwork(MODEL_REPOSITORY)


@pytest.fixture(scope="module")
def floor(mnist, features):
    return real_floor(mnist, features, QUALITY_SAMPLES)


def _sample_quality(model: str, mnist, features, truncation=None) -> dict[str, float]:
    entry = next(e for e in ENTRIES.values() if e.model == model and e.capability == "generate")
    return evaluate_entry(entry, mnist, features, truncation, QUALITY_SAMPLES)


def test_the_feature_network_is_a_99_3_percent_classifier(mnist, features):
    probabilities, _ = features(mnist.test.images[:, None])
    assert (probabilities.argmax(1) == mnist.test.labels).mean() >= 0.993


@pytest.mark.parametrize("model", sorted(FLOORS))
def test_every_gan_keeps_its_shipped_sample_quality(model, mnist, features, floor):
    lowest_score, highest_fid_ratio = FLOORS[model]
    quality = _sample_quality(model, mnist, features)
    assert quality["classifier_score"] >= lowest_score, quality
    assert quality["fid"] <= highest_fid_ratio * floor["fid"], (quality, floor)


def test_the_conditional_gan_draws_the_requested_class_and_truncation_trades_diversity(mnist, features):
    untruncated, truncated = _sample_quality("acgan", mnist, features, 1.0), _sample_quality("acgan", mnist, features, 0.5)
    assert untruncated["class_accuracy"] >= 0.97 and truncated["class_accuracy"] >= untruncated["class_accuracy"] - 0.005
    assert truncated["intra_class_diversity"] < untruncated["intra_class_diversity"]


def test_m2_draws_the_requested_class_more_often_than_chance(mnist, features):
    quality = _sample_quality("m2", mnist, features)  # m2 v2: 42.9% / 3.18 (chance: 10%); its decoder leans on z
    assert quality["class_accuracy"] >= 0.35 and quality["classifier_score"] >= 2.5, quality


def test_the_vae_keeps_its_shipped_sample_quality_and_elbo(mnist, features):
    assert _sample_quality("conv_vae", mnist, features)["classifier_score"] >= 6.0  # measured 6.19
    card = ENTRIES["conv_vae_decoder"].cards[ENTRIES["conv_vae_decoder"].versions[0]]["metrics"]
    assert card["test_negative_elbo"] < 105 and card["test_negative_elbo_binarized"] < 105  # 100.5 and 99.0 nats


# Semi-supervised classification: the issue's hard floor, Kingma et al.'s best figure with 100 labels.
KINGMA_M1_M2_ERROR = 0.0333


def _served_test_error(entry, mnist) -> float:
    session = onnxruntime.InferenceSession(str(entry.version_path(entry.versions[0]) / repository.ONNX_FILE), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"image": mnist.test.images[:, None]})
    return float((probabilities.argmax(1) != mnist.test.labels).mean())


def test_the_default_classifier_learned_from_100_labels_and_is_within_the_floor(mnist):
    entry = next(e for e in ENTRIES.values() if e.model == Settings().default_classifier and e.capability == "classify")
    card = entry.cards[entry.versions[0]]
    assert card["config"]["labels_per_class"] == 10  # a semi-supervised model, not the all-labels lenet
    error = _served_test_error(entry, mnist)
    assert error <= KINGMA_M1_M2_ERROR
    assert abs(error - card["metrics"]["test_error"]) < 0.001  # the card tells the truth


@pytest.mark.parametrize("name, highest_error", [  # measured 1.26%, 22.02%
    ("ssgan_classifier", 0.014), ("m2_classifier", 0.23),
])
def test_every_semi_supervised_classifier_keeps_its_error(name, highest_error, mnist):
    entry = ENTRIES[name]
    card = entry.cards[entry.versions[0]]
    assert card["config"]["labels_per_class"] == 10
    error = _served_test_error(entry, mnist)
    assert error <= highest_error
    assert abs(error - card["metrics"]["test_error"]) < 0.001
