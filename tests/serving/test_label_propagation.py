"""Label propagation over kNN graphs (serving/label_propagation.py) on synthetic data."""
import numpy as np
import pytest

from serving.label_propagation import knn_graph, propagate, smoothness


def two_moons(n: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    angle, labels = rng.uniform(0, np.pi, n), rng.integers(0, 2, n)
    upper = np.stack([np.cos(angle), np.sin(angle)], 1)
    lower = np.stack([1 - np.cos(angle), 0.5 - np.sin(angle)], 1)
    return np.where(labels[:, None] == 0, upper, lower) + rng.normal(0, noise, (n, 2)), labels


def blobs(per_class: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (classes, 8))
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + rng.normal(0, 1, (len(labels), 8)), labels


def one_per_class(labels: np.ndarray) -> np.ndarray:
    return np.asarray([np.flatnonzero(labels == c)[0] for c in np.unique(labels)])


@pytest.mark.parametrize("method", ["harmonic", "spreading"])
def test_one_label_per_moon_labels_both_moons(method):
    points, labels = two_moons(600, 0.05, seed=0)
    seeds = one_per_class(labels)
    scores = propagate(knn_graph(points, 10), seeds, labels[seeds], 2, method)
    assert (scores.argmax(1) == labels).mean() > 0.99
    np.testing.assert_allclose(scores.sum(1), 1, atol=1e-6)


@pytest.mark.parametrize("method", ["harmonic", "spreading"])
def test_one_label_per_blob_labels_every_blob(method):
    points, labels = blobs(100, 5, seed=1)
    seeds = one_per_class(labels)
    scores = propagate(knn_graph(points, 8), seeds, labels[seeds], 5, method)
    assert (scores.argmax(1) == labels).all()


def test_the_harmonic_solution_is_the_smoothest_with_the_labels_clamped():
    points, labels = two_moons(300, 0.1, seed=2)
    graph = knn_graph(points, 10)
    seeds = one_per_class(labels)
    scores = propagate(graph, seeds, labels[seeds], 2, "harmonic")
    np.testing.assert_array_equal(scores[seeds].argmax(1), labels[seeds])  # clamped
    rng = np.random.default_rng(0)
    for _ in range(5):
        moved = scores + rng.normal(0, 0.01, scores.shape)
        moved[seeds] = scores[seeds]
        assert smoothness(graph, moved) > smoothness(graph, scores)


def test_the_graph_is_symmetric_with_weights_in_zero_one():
    points, _ = two_moons(200, 0.05, seed=3)
    graph = knn_graph(points, 5)
    assert abs(graph - graph.T).max() == 0
    assert graph.data.min() > 0 and graph.data.max() <= 1
    assert graph.diagonal().max() == 0
    assert (np.diff(graph.indptr) >= 5).all()  # each node keeps at least its own k neighbours


@pytest.mark.parametrize("method", ["harmonic", "spreading"])
def test_a_component_without_labels_gets_no_scores(method):
    points, labels = blobs(50, 2, seed=4)
    seeds = np.asarray([0])  # only blob 0 is labelled; blob 1 is far away: no edge reaches it
    scores = propagate(knn_graph(points, 5), seeds, labels[seeds], 1, method)
    assert (scores[labels == 0].sum(1) > 0.99).all()
    assert (scores[labels == 1].sum(1) == 0).all()
