"""The generate capability's numerics: latents from (seed, index), truncation, interpolation, and the
quality measures (FID, classifier score, diversity)."""
import numpy as np
import pytest

from latentserve.latents import sample_latents
from serving.generation import interpolate
from latentserve.quality import classifier_score, frechet_distance, intra_class_diversity


def test_a_sample_depends_only_on_seed_and_index():
    whole = sample_latents(7, 0, 100, 16)
    assert np.array_equal(whole[40:70], sample_latents(7, 40, 30, 16))
    assert np.array_equal(whole[99:], sample_latents(7, 99, 1, 16))
    assert not np.array_equal(whole[:1], sample_latents(8, 0, 1, 16))
    assert not np.array_equal(whole[0], whole[1])


def test_latents_are_standard_normal():
    values = sample_latents(0, 0, 20_000, 8).ravel()
    assert abs(values.mean()) < 0.02 and abs(values.std() - 1) < 0.02
    assert abs((np.abs(values) > 2).mean() - 0.0455) < 0.005  # two-sided normal tail


def test_truncation_keeps_values_inside_and_redraws_only_those_outside():
    plain, truncated = sample_latents(3, 0, 500, 32), sample_latents(3, 0, 500, 32, truncation=0.5)
    assert np.abs(truncated).max() <= 0.5
    inside = np.abs(plain) <= 0.5
    assert np.array_equal(truncated[inside], plain[inside])
    assert np.array_equal(truncated[200:300], sample_latents(3, 200, 100, 32, truncation=0.5))


def test_interpolation_ends_at_the_endpoints():
    a, b = sample_latents(1, 0, 2, 64)
    for spherical in (False, True):
        path = interpolate(a, b, 9, spherical)
        assert path.shape == (9, 64)
        np.testing.assert_allclose(path[0], a, atol=1e-6)
        np.testing.assert_allclose(path[-1], b, atol=1e-6)


def test_spherical_interpolation_keeps_the_norm_of_gaussian_latents():
    a, b = sample_latents(2, 0, 2, 256)
    middle_linear, middle_spherical = interpolate(a, b, 3, False)[1], interpolate(a, b, 3, True)[1]
    typical = np.sqrt(256)
    assert abs(np.linalg.norm(middle_spherical) - typical) < 0.1 * typical
    assert np.linalg.norm(middle_linear) < 0.8 * typical  # the straight path cuts through the low-norm middle


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
