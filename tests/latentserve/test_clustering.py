"""K-means and the agreement measures on cases worked by hand."""
import numpy as np
import pytest

from latentserve.clustering import kmeans, normalised_mutual_information, purity


def test_kmeans_finds_well_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    codes = np.concatenate([centre + rng.normal(0, 0.5, (50, 2)) for centre in centres]).astype(np.float32)
    found = kmeans(codes, 3, seed=1)
    truth = np.repeat(np.arange(3), 50)
    assert purity(found.assignments, truth) == 1.0
    assert normalised_mutual_information(found.assignments, truth) == pytest.approx(1.0)
    assert sorted(np.round(found.centroids).astype(int).tolist()) == sorted(centres.astype(int).tolist())
    np.testing.assert_allclose(found.distances, ((codes - found.centroids[found.assignments]) ** 2).sum(1), rtol=1e-4, atol=1e-4)


def test_purity_and_nmi_on_small_tables():
    clusters = np.array([0, 0, 0, 1, 1, 1])
    assert purity(clusters, np.array([5, 5, 7, 7, 7, 7])) == pytest.approx(5 / 6)
    assert normalised_mutual_information(clusters, np.array([1, 1, 1, 0, 0, 0])) == pytest.approx(1.0)  # renamed labels
    assert normalised_mutual_information(clusters, np.array([0, 1, 0, 1, 0, 1])) == pytest.approx(0.0, abs=0.1)


def test_nmi_matches_the_formula_on_an_uneven_table():
    clusters, labels = np.array([0, 0, 1, 1, 1, 2]), np.array([0, 1, 1, 1, 2, 2])
    joint = np.array([[1, 1, 0], [0, 2, 1], [0, 0, 1]]) / 6
    rows, columns = joint.sum(1), joint.sum(0)
    nz = joint > 0
    information = (joint[nz] * np.log(joint[nz] / np.outer(rows, columns)[nz])).sum()
    entropy = lambda p: -(p * np.log(p)).sum()  # noqa: E731
    assert normalised_mutual_information(clusters, labels) == pytest.approx(information / ((entropy(rows) + entropy(columns)) / 2))


def test_more_clusters_than_codes_is_refused():
    with pytest.raises(ValueError, match="3 clusters for 2 codes"):
        kmeans(np.zeros((2, 4), np.float32), 3)
