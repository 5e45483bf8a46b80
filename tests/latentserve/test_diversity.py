"""MS-SSIM, sliced Wasserstein distance and the memorisation check on cases whose answers are known."""
from dataclasses import replace

import numpy as np
import pytest

from latentserve import diversity
from latentserve.datasets import Mnist, Split


@pytest.fixture(scope="module")
def digits(mnist):
    return mnist.test.images[:400]


def test_ms_ssim_is_one_for_identical_images_and_symmetric_below_one_otherwise(digits):
    np.testing.assert_allclose(diversity.ms_ssim(digits[:20], digits[:20]), 1.0)
    forward, backward = diversity.ms_ssim(digits[:20], digits[20:40]), diversity.ms_ssim(digits[20:40], digits[:20])
    np.testing.assert_allclose(forward, backward)
    assert ((forward >= 0) & (forward < 0.9)).all()


def test_a_set_of_copies_has_pair_ms_ssim_one_and_real_digits_are_more_alike_within_a_class(mnist):
    copies = np.repeat(mnist.test.images[:1], 50, axis=0)
    assert diversity.mean_pair_ms_ssim(copies, pairs=100) == pytest.approx(1.0)
    images, labels = mnist.test.images[:2000], mnist.test.labels[:2000]
    assert diversity.mean_pair_ms_ssim(images, labels, pairs=300) > diversity.mean_pair_ms_ssim(images, pairs=300)


def test_the_laplacian_pyramid_collapses_back_to_the_image(digits):
    *bands, residue = diversity.laplacian_pyramid(digits)
    assert [b.shape[1:] for b in bands] + [residue.shape[1:]] == [(28, 28), (14, 14), (7, 7)]
    image = residue
    for band in reversed(bands):
        image = band + diversity._upsample(image)
    np.testing.assert_allclose(image, digits, atol=1e-12)


def test_swd_of_a_set_against_itself_is_near_zero_and_far_from_noise(digits):
    descriptors = diversity.pyramid_descriptors(digits)
    assert all(diversity.sliced_wasserstein(d, d) == 0 for d in descriptors)
    itself = diversity.swd(digits, digits)  # other patch positions on the same images
    noise = diversity.swd(digits, np.random.default_rng(0).random(digits.shape).astype(np.float32))
    assert all(0 <= s < n / 5 for s, n in zip(itself, noise)), (itself, noise)
    with pytest.raises(ValueError, match="differ in size"):
        diversity.sliced_wasserstein(descriptors[0], descriptors[0][:-1])


def test_copies_of_training_images_are_found_and_flagged_as_memorised(mnist):
    training = mnist.train.images[:2000]
    distances, indices = diversity.nearest_distances(training[[7, 1500, 3]], training)
    np.testing.assert_array_equal(indices, [7, 1500, 3])
    np.testing.assert_allclose(distances, 0, atol=1e-6)
    def nearest(images):
        return diversity.nearest_distances(images, training)[0]

    real = nearest(mnist.test.images[:300])
    copied = diversity.memorisation(nearest(training[:300]), real)
    assert copied["nearer_than_real_1st_percentile"] == 1.0 and copied["nearest_training_median"] < 1e-3
    unseen = diversity.memorisation(nearest(mnist.valid.images[:300]), real)
    assert unseen["nearer_than_real_1st_percentile"] < 0.05
    assert unseen["nearest_training_median"] == pytest.approx(unseen["nearest_training_median_real"], rel=0.1)


def test_the_real_side_is_computed_once_per_dataset_object_not_per_content_hash(mnist):
    # Test fixtures cut the training split with dataclasses.replace and keep the sha256: the cache must not mix them up
    def cut(train_images: np.ndarray) -> Mnist:
        return replace(mnist, train=Split(train_images, mnist.train.labels[: len(train_images)]), test=Split(mnist.test.images[:20], mnist.test.labels[:20]))

    first, second = cut(mnist.train.images[:50]), cut(mnist.train.images[50:100])
    for data in (first, second):
        distances = diversity._test_nearest_distances(data)
        np.testing.assert_array_equal(distances, diversity.nearest_distances(data.test.images, data.train.images)[0])
        assert diversity._test_nearest_distances(data) is distances
    assert not np.array_equal(diversity._test_nearest_distances(first), diversity._test_nearest_distances(second))


def test_the_closest_pairs_grid_puts_the_copies_first_above_their_training_images(mnist):
    training = mnist.train.images[:500]
    images = np.concatenate([mnist.test.images[:30], training[[42, 9]]])
    nearest = diversity.nearest_distances(images, training)
    pairs = diversity.closest_pairs(images, training, nearest, count=4)
    assert pairs.shape == (8, 1, 28, 28)
    for column, index in enumerate((42, 9)):  # both copies at distance 0, in either order
        np.testing.assert_array_equal(pairs[column, 0], pairs[4 + column, 0])
    assert {int(i) for i in nearest[1][-2:]} == {42, 9}
