"""Sample and translation quality in the feature space of the project's MNIST classifier (model `lenet`,
graph `classifier`: probabilities and 128 penultimate features). Inception-based FID means little on digits
and its weights cannot be downloaded here, so FID, the classifier score ("inception score") and class
accuracy are all computed with that classifier, always beside the same figures for real data.
"""
import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime

from sklearn.svm import SVC

from latentserve import datasets
from latentserve.contract import IMAGE, LABEL, LATENT
from latentserve.datasets import Mnist
from latentserve.diversity import nearest_distances, real_measures, sample_measures, ssim_maps
from latentserve.latents import sample_latents
from latentserve.repository import ONNX_FILE, Entry, read_repository

FEATURE_ENTRY = "lenet_classifier"
DEFAULT_REPOSITORY = Path(__file__).resolve().parents[1] / "model_repository"
SAMPLES = 10_000
SEED = 0
BATCH = 1000


class FeatureNetwork:
    """The newest version of the classifier: images (n, 1, 28, 28) -> (probabilities, features)."""

    def __init__(self, repository_root: Path = DEFAULT_REPOSITORY):
        entry = read_repository(repository_root)[FEATURE_ENTRY]
        self.version = entry.versions[0]
        self._session = onnxruntime.InferenceSession(
            str(entry.version_path(self.version) / ONNX_FILE), providers=["CPUExecutionProvider"]
        )
        self._test_sets: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [self._session.run(["probabilities", "features"], {"image": images[i : i + BATCH]}) for i in range(0, len(images), BATCH)]
        return np.concatenate([p for p, _ in parts]), np.concatenate([f for _, f in parts])

    def test_set(self, data: Mnist) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, features) of the test images, computed once: every score compares with them."""
        if data.sha256 not in self._test_sets:
            self._test_sets[data.sha256] = self(data.test.images[:, None])
        return self._test_sets[data.sha256]


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets: |mu_a - mu_b|^2 + tr(Sa + Sb - 2 (Sa Sb)^1/2)."""
    mean_a, mean_b = a.mean(0, dtype=np.float64), b.mean(0, dtype=np.float64)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr((Sa Sb)^1/2) = sum of sqrt(eigenvalues of Sa^1/2 Sb Sa^1/2), a symmetric PSD matrix
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def classifier_score(probabilities: np.ndarray) -> float:
    """exp(E_x KL(p(y|x) || p(y))), the inception score with the MNIST classifier: 10 at best."""
    p = np.clip(probabilities.astype(np.float64), 1e-12, 1)
    marginal = p.mean(0)
    return float(np.exp((p * (np.log(p) - np.log(marginal))).sum(1).mean()))


def intra_class_diversity(features: np.ndarray, labels: np.ndarray) -> float:
    """Root-mean-square distance between two samples of the same class in feature space, averaged over
    classes: it falls as truncation trades variety for fidelity."""
    distances = []
    for label in np.unique(labels):
        group = features[labels == label].astype(np.float64)
        n = len(group)
        squared = (group**2).sum(1)
        total = (squared.sum() * 2 * n - 2 * (group.sum(0) ** 2).sum())  # sum over pairs (i, j) of |fi - fj|^2
        distances.append(np.sqrt(max(total, 0) / (n * (n - 1))))
    return float(np.mean(distances))


def real_floor(data: Mnist, features: FeatureNetwork, samples: int = SAMPLES) -> dict[str, float]:
    """What real data scores: FID of the first `samples` training images against the 10k test images (the
    same count as a generator's samples: FID's bias depends on it), and the test set's classifier score,
    class accuracy and intra-class diversity."""
    test_probabilities, test_features = features.test_set(data)
    _, train_features = features(data.train.images[:samples, None])
    return {
        "fid": frechet_distance(train_features, test_features),
        "classifier_score": classifier_score(test_probabilities),
        "class_accuracy": float((test_probabilities.argmax(1) == data.test.labels).mean()),
        "intra_class_diversity": intra_class_diversity(test_features, data.test.labels),
    }


def generate(run: Callable[[dict[str, np.ndarray]], np.ndarray], latent_dim: int, classes: int,
             truncation: float | None = None, samples: int = SAMPLES) -> tuple[np.ndarray, np.ndarray | None]:
    """(`samples` images generated from seed 0, indices 0..samples-1, with latents drawn as the gateway
    draws them; the classes asked for, in turn, if the generator is conditional, else None)."""
    labels = np.arange(samples) % classes if classes else None
    images = []
    for start in range(0, samples, BATCH):
        count = min(BATCH, samples - start)
        feeds = {LATENT: sample_latents(SEED, start, count, latent_dim, truncation)}
        if classes:
            feeds[LABEL] = labels[start : start + count, None]
        images.append(run(feeds))
    return np.concatenate(images), labels


def score_samples(images: np.ndarray, labels: np.ndarray | None, data: Mnist, features: FeatureNetwork | None = None,
                  diversity: bool = False) -> dict[str, float]:
    """FID against the test set and classifier score of generated images; for a conditional generator's
    (`labels`: the classes asked for) also class accuracy and intra-class diversity. With `diversity`,
    also MS-SSIM, SWD and the memorisation check (latentserve.diversity), each real value as `real_<name>`."""
    features = features or FeatureNetwork()
    probabilities, sample_features = features(images)
    _, test_features = features.test_set(data)
    metrics = {
        "fid": frechet_distance(sample_features, test_features),
        "classifier_score": classifier_score(probabilities),
    }
    if labels is not None:
        metrics["class_accuracy"] = float((probabilities.argmax(1) == labels).mean())
        metrics["intra_class_diversity"] = intra_class_diversity(sample_features, labels)
    if diversity:
        metrics |= sample_measures(images, labels, data, nearest_distances(images, data.train.images))
        metrics |= {f"real_{key}": value for key, value in real_measures(data, len(images), labels is not None).items()}
    return metrics


def evaluate_generator(run: Callable[[dict[str, np.ndarray]], np.ndarray], latent_dim: int, classes: int, data: Mnist,
                       features: FeatureNetwork | None = None, truncation: float | None = None, samples: int = SAMPLES,
                       diversity: bool = False) -> dict[str, float]:
    """`score_samples` of `generate`'s images."""
    images, labels = generate(run, latent_dim, classes, truncation, samples)
    return score_samples(images, labels, data, features, diversity)


def entry_runner(entry: Entry) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The newest version of a repository generator, run in onnxruntime: feeds -> images."""
    session = onnxruntime.InferenceSession(str(entry.version_path(entry.versions[0]) / ONNX_FILE), providers=["CPUExecutionProvider"])
    return lambda feeds: session.run([IMAGE], feeds)[0]


def evaluate_entry(entry: Entry, data: Mnist, features: FeatureNetwork, truncation: float | None = None,
                   samples: int = SAMPLES) -> dict[str, float]:
    """`evaluate_generator` on the newest version of a repository generator."""
    return evaluate_generator(entry_runner(entry), entry.latent_dim, entry.classes, data, features, truncation, samples)


Translator = Callable[[np.ndarray], np.ndarray]  # images (n, 1, 28, 28) -> translated images, same shape


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image SSIM of images in [0, 1]."""
    luminance, contrast_structure = ssim_maps(*(x.reshape(len(x), 28, 28).astype(np.float64) for x in (a, b)))
    return (luminance * contrast_structure).mean((1, 2))


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image peak signal-to-noise ratio in dB, for a peak of 1."""
    mse = ((a.reshape(len(a), -1).astype(np.float64) - b.reshape(len(b), -1)) ** 2).mean(1)
    return 10 * np.log10(1 / np.clip(mse, 1e-10, None))


def evaluate_paired(edges2digit: Translator, data: Mnist, features: FeatureNetwork) -> dict[str, float]:
    """The edge maps of the 10k test digits translated back: L1, SSIM and PSNR to the real digits, the
    MNIST classifier's accuracy on the translations against the digits' labels (pix2pix's FCN score), and
    FID of the translations to the real digits (how real they look as a set; `real_floor` is its floor)."""
    target = data.test.images[:, None]
    translated = edges2digit(datasets.edge_map(target))
    probabilities, translated_features = features(translated)
    return {
        "l1": float(np.abs(translated - target).mean()),
        "ssim": float(ssim(translated, target).mean()),
        "psnr": float(psnr(translated, target).mean()),
        "class_accuracy": float((probabilities.argmax(1) == data.test.labels).mean()),
        "fid": frechet_distance(translated_features, features.test_set(data)[1]),
    }


@functools.cache
def uci_classifier() -> SVC:
    """Predicts digits of UCI-domain images from their scans (`to_scans`)."""
    train = datasets.load_uci_digits().train
    return SVC(gamma=0.001).fit(datasets.to_scans(train.images), train.labels)


def classify_uci(images: np.ndarray) -> np.ndarray:
    return uci_classifier().predict(datasets.to_scans(images))


def label_preservation(to_uci: np.ndarray, mnist_labels: np.ndarray, to_mnist: np.ndarray, uci_labels: np.ndarray,
                       features: FeatureNetwork) -> dict[str, float]:
    """How often the target domain's classifier finds the source label in a translation: the UCI SVM on
    MNIST digits translated to UCI (`to_uci`), the MNIST classifier on UCI digits translated to MNIST."""
    return {
        "mnist2uci_accuracy": float((classify_uci(to_uci) == mnist_labels).mean()),
        "uci2mnist_accuracy": float((features(to_mnist)[0].argmax(1) == uci_labels).mean()),
    }


def evaluate_unpaired(mnist2uci: Translator, uci2mnist: Translator, data: Mnist, features: FeatureNetwork) -> dict[str, float]:
    """Both directions on the test splits (10k MNIST, 500 UCI): label preservation beside the identity map
    (the untranslated image given to the target domain's classifier), cycle L1, and FID to the target
    domain's test images with its real-vs-real floor, both on 500 images (the UCI test split's size)."""
    uci = datasets.load_uci_digits()
    mnist_images, uci_images = data.test.images[:, None], uci.test.images[:, None]
    n = len(uci_images)
    to_uci, to_mnist = mnist2uci(mnist_images), uci2mnist(uci_images)
    metrics = label_preservation(to_uci, data.test.labels, to_mnist, uci.test.labels, features)
    _, uci_features = features(uci_images)
    _, mnist_test_features = features.test_set(data)
    metrics |= {
        "mnist2uci_identity_accuracy": float((classify_uci(mnist_images) == data.test.labels).mean()),
        "uci2mnist_identity_accuracy": float((features(uci_images)[0].argmax(1) == uci.test.labels).mean()),
        "mnist2uci_cycle_l1": float(np.abs(uci2mnist(to_uci) - mnist_images).mean()),
        "uci2mnist_cycle_l1": float(np.abs(mnist2uci(to_mnist) - uci_images).mean()),
        "mnist2uci_fid": frechet_distance(features(to_uci[:n])[1], uci_features),
        "mnist2uci_fid_floor": frechet_distance(features(uci.train.images[:n, None])[1], uci_features),
        "uci2mnist_fid": frechet_distance(features(to_mnist)[1], mnist_test_features),
        "uci2mnist_fid_floor": frechet_distance(features(data.train.images[:n, None])[1], mnist_test_features),
    }
    return metrics
