"""The sample-quality measures on known cases: FID, classifier score, intra-class diversity."""
import numpy as np
import pytest

from latentserve.quality import classifier_score, frechet_distance, intra_class_diversity


def test_frechet_distance_is_zero_for_one_set_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((2000, 8))
    assert frechet_distance(features, features) == pytest.approx(0, abs=1e-6)
    shifted = frechet_distance(features, features + 1.0)
    assert shifted == pytest.approx(8.0, rel=1e-6)  # |mean difference|^2, covariances equal
    assert frechet_distance(features, rng.standard_normal((2000, 8))) < 0.1


def test_classifier_score_runs_from_one_to_the_number_of_classes():
    confident_balanced = np.eye(10)[np.arange(1000) % 10]
    assert classifier_score(confident_balanced) == pytest.approx(10, rel=1e-3)
    assert classifier_score(np.full((1000, 10), 0.1)) == pytest.approx(1)
    assert classifier_score(np.eye(10)[np.zeros(1000, int)]) == pytest.approx(1)  # one class only


def test_intra_class_diversity_is_the_rms_pairwise_distance_averaged_over_classes():
    features = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0], [0.0, 0.0]])
    labels = np.array([0, 0, 1, 1])
    # class 0: the one pair is 5 apart; class 1: 0 apart
    assert intra_class_diversity(features, labels) == pytest.approx(2.5)
