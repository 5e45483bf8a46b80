"""K-means over stored codes (FAISS's), and how well clusters agree with labels: purity and normalised
mutual information (NMI, with the arithmetic-mean normalisation scikit-learn uses by default).
`cluster_collection` runs it over a collection's items through the gateway (`latentserve index cluster`)."""
from dataclasses import dataclass

import faiss
import numpy as np


@dataclass(frozen=True)
class Clusters:
    centroids: np.ndarray  # (k, dim) float32
    assignments: np.ndarray  # (n,) int64: each code's nearest centroid
    distances: np.ndarray  # (n,) float32: squared L2 to it


def kmeans(codes: np.ndarray, clusters: int, iterations: int = 25, seed: int = 0, restarts: int = 5) -> Clusters:
    """Lloyd's K-means with FAISS: each of `restarts` runs starts from distinct random codes (FAISS has
    no k-means++), and the run with the lowest squared error is kept, since one start can settle with
    two centroids in one group."""
    codes = np.ascontiguousarray(codes, np.float32)
    if not 2 <= clusters <= len(codes):
        raise ValueError(f"{clusters} clusters for {len(codes)} codes; want 2 to {len(codes)}")
    model = faiss.Kmeans(codes.shape[1], clusters, niter=iterations, nredo=restarts, seed=seed, verbose=False, min_points_per_centroid=1)
    model.train(codes)
    distances, nearest = model.index.search(codes, 1)
    return Clusters(model.centroids, nearest[:, 0].astype(np.int64), distances[:, 0])


@dataclass(frozen=True)
class ClusteredCollection:
    ids: list[str]
    clusters: Clusters
    summary: dict  # items, sizes, labelled_items; purity and nmi over the labelled ones


def cluster_collection(client, collection: str, clusters: int, filter: str = "", iterations: int = 25, seed: int = 0) -> ClusteredCollection:
    """K-means over the stored codes of what `filter` selects in `collection`, fetched page by page with
    `client` (a latentserve.client.Client)."""
    items, token = [], ""
    while True:
        page, token = client.list_items(collection, filter, page_size=1000, page_token=token)
        items += page
        if not token:
            break
    if len(items) < clusters:
        raise ValueError(f"{len(items)} items; K-means with {clusters} clusters needs at least as many")
    found = kmeans(np.stack([item.code for item in items]), clusters, iterations, seed)
    labelled = np.asarray([item.label is not None for item in items])
    summary = {"items": len(items), "clusters": clusters, "sizes": np.bincount(found.assignments, minlength=clusters).tolist(),
               "labelled_items": int(labelled.sum())}
    if labelled.any():
        labels = np.asarray([item.label for item in items if item.label is not None])
        summary["purity"] = round(purity(found.assignments[labelled], labels), 4)
        summary["nmi"] = round(normalised_mutual_information(found.assignments[labelled], labels), 4)
    return ClusteredCollection([item.id for item in items], found, summary)


def purity(assignments: np.ndarray, labels: np.ndarray) -> float:
    """The share of items whose label is their cluster's most common label."""
    table = _contingency(assignments, labels)
    return float(table.max(1).sum() / table.sum())


def normalised_mutual_information(assignments: np.ndarray, labels: np.ndarray) -> float:
    """I(clusters; labels) / mean(H(clusters), H(labels)); 1 for the same partition, near 0 for unrelated."""
    joint = _contingency(assignments, labels) / len(labels)
    rows, columns = joint.sum(1), joint.sum(0)
    nonzero = joint > 0
    information = (joint[nonzero] * np.log(joint[nonzero] / np.outer(rows, columns)[nonzero])).sum()
    entropy = lambda p: -(p[p > 0] * np.log(p[p > 0])).sum()  # noqa: E731
    mean_entropy = (entropy(rows) + entropy(columns)) / 2
    return float(information / mean_entropy) if mean_entropy > 0 else 1.0


def _contingency(assignments: np.ndarray, labels: np.ndarray) -> np.ndarray:
    _, cluster = np.unique(assignments, return_inverse=True)
    _, label = np.unique(labels, return_inverse=True)
    table = np.zeros((cluster.max() + 1, label.max() + 1))
    np.add.at(table, (cluster, label), 1)
    return table
