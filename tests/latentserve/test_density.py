"""The out-of-distribution score's parts (latentserve/density.py) on cases worked by hand."""
import math

import numpy as np

from latentserve.density import binarise, complexity_bits, ood_scores


def test_a_blank_image_costs_what_the_krichevsky_trofimov_estimator_says():
    # every pixel of a blank image has the all-0 context and is 0: pixel k costs -log2((k + 1/2) / (k + 1))
    want = sum(-math.log2((k + 0.5) / (k + 1)) for k in range(784))
    np.testing.assert_allclose(complexity_bits(np.zeros((1, 28, 28))), [want])


def test_a_lone_pixel_after_a_blank_run_costs_its_surprise():
    image = np.zeros((1, 28, 28))
    image[0, 0, 5] = 1  # the 6th pixel: five 0s seen in the all-0 context before it
    blank = complexity_bits(np.zeros((1, 28, 28)))[0]
    assert complexity_bits(image)[0] > blank + -math.log2(0.5 / 6) - 1  # about log2(12) bits for the 1, and more after it


def test_code_lengths_order_blank_below_digits_below_noise(mnist):
    digits = binarise(mnist.test.images[:50])
    noise = binarise(np.random.default_rng(0).random((50, 28, 28)))
    blank = complexity_bits(np.zeros((1, 28, 28)))[0]
    lengths = complexity_bits(digits)
    assert blank < lengths.min() and lengths.max() < complexity_bits(noise).min()
    assert complexity_bits(noise).mean() > 700  # about a bit a pixel: noise does not compress


def test_each_image_is_coded_on_its_own():
    rng = np.random.default_rng(1)
    images = binarise(rng.random((70, 28, 28)) ** 3)  # more than one chunk of 64
    np.testing.assert_allclose(complexity_bits(images), np.concatenate([complexity_bits(image[None]) for image in images]), rtol=1e-12)


def test_the_coder_matches_the_pixel_by_pixel_algorithm(mnist):
    def code_length(image: np.ndarray) -> float:
        padded = np.pad(image.astype(int), ((1, 0), (1, 1)))
        ones, seen, bits = np.zeros(16), np.zeros(16), 0.0
        for row in range(28):
            for column in range(28):
                west, north_west = padded[row + 1, column], padded[row, column]
                north, north_east = padded[row, column + 1], padded[row, column + 2]
                context = west + 2 * north_west + 4 * north + 8 * north_east
                p_one = (ones[context] + 0.5) / (seen[context] + 1)
                bits -= math.log2(p_one if image[row, column] else 1 - p_one)
                ones[context] += image[row, column]
                seen[context] += 1
        return bits

    images = np.concatenate([binarise(mnist.test.images[:3]), binarise(np.random.default_rng(2).random((2, 28, 28)))])
    np.testing.assert_allclose(complexity_bits(images), [code_length(image) for image in images], rtol=1e-9)


def test_the_score_is_bits_of_the_model_minus_bits_of_the_compressor():
    scores = ood_scores(np.array([-math.log(2) * 100, -math.log(2) * 300]), np.array([150.0, 150.0]))
    np.testing.assert_allclose(scores, [-50, 150], rtol=1e-6)


def test_binarise_is_a_threshold_at_one_half():
    assert binarise(np.array([0.0, 0.5, 0.51, 1.0])).tolist() == [0, 0, 1, 1]
