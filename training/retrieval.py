"""The unsupervised-hashing retrieval protocol on MNIST: 1,000 test queries (100 per class) against the
other 69,000 images, relevance = same class; mAP over the whole ranking and precision@k."""
from dataclasses import dataclass

import numpy as np

from latentserve.datasets import Mnist

QUERIES_PER_CLASS = 100
PROTOCOL_SEED = 0


@dataclass(frozen=True)
class Protocol:
    queries: np.ndarray  # (1000, 28, 28)
    query_labels: np.ndarray
    gallery: np.ndarray  # (69000, 28, 28)
    gallery_labels: np.ndarray


def protocol(data: Mnist) -> Protocol:
    rng = np.random.default_rng(PROTOCOL_SEED)
    picked = np.concatenate(
        [rng.choice(np.flatnonzero(data.test.labels == c), QUERIES_PER_CLASS, replace=False) for c in range(10)]
    )
    rest = np.setdiff1d(np.arange(len(data.test.labels)), picked)
    gallery = np.concatenate([data.train.images, data.valid.images, data.test.images[rest]])
    gallery_labels = np.concatenate([data.train.labels, data.valid.labels, data.test.labels[rest]])
    return Protocol(data.test.images[picked], data.test.labels[picked], gallery, gallery_labels)


def l2_distances(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    q, g = queries.astype(np.float32), gallery.astype(np.float32)
    return (q * q).sum(1)[:, None] - 2 * q @ g.T + (g * g).sum(1)[None, :]


def hamming_distances(query_bits: np.ndarray, gallery_bits: np.ndarray) -> np.ndarray:
    """Bits as 0/1 arrays (n, bits): Hamming distance = bits - agreements."""
    q, g = query_bits.astype(np.float32) * 2 - 1, gallery_bits.astype(np.float32) * 2 - 1
    return (q.shape[1] - q @ g.T) / 2


def retrieval_scores(distances: np.ndarray, query_labels, gallery_labels, k: int = 100) -> dict[str, float]:
    """mAP over the full ranking and precision@k. Ties keep gallery order (stable sort)."""
    aps, precisions = [], []
    for start in range(0, len(query_labels), 100):
        order = np.argsort(distances[start : start + 100], axis=1, kind="stable")
        relevant = gallery_labels[order] == query_labels[start : start + 100, None]
        hits = np.cumsum(relevant, axis=1)
        ranks = np.arange(1, relevant.shape[1] + 1)
        aps.append((hits / ranks * relevant).sum(1) / relevant.sum(1))
        precisions.append(hits[:, k - 1] / k)
    return {"map": float(np.concatenate(aps).mean()), f"precision_at_{k}": float(np.concatenate(precisions).mean())}


def pca_projection(train_images: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and top-`dim` principal directions (784, dim) of the training images."""
    x = train_images.reshape(len(train_images), -1).astype(np.float64)
    mean = x.mean(0)
    _, vectors = np.linalg.eigh(np.cov(x - mean, rowvar=False))
    return mean.astype(np.float32), vectors[:, ::-1][:, :dim].astype(np.float32)
