"""Likelihoods and the out-of-distribution score, computed the same way at export (the card's threshold)
and in the gateway.

A raw likelihood is a poor judge of "is this like the training data": a generative model can give a
simple image it never saw (a blank one, a blocky enlarged scan) a higher likelihood than its own test
data (Nalisnick et al. 2019). The score here is Serra et al. 2020's input-complexity correction:

    S(x) = -log2 p(x) - L(x)          (bits; higher: more out of distribution)

where L(x) is the code length of x under a generic compressor, which stands in for a universal model of
all images. For the bilevel images the density model scores, the compressor is the adaptive context model
of the bilevel image coders (JBIG's approach, ITU-T T.82): each pixel coded with the Krichevsky-Trofimov
estimate of p(1) among the earlier pixels of the same image that had the same four causal neighbours
(west, north-west, north, north-east), counted from nothing per image.
"""
import math

import numpy as np

BINARY_THRESHOLD = 0.5  # the gateway scores images binarised at this grey level
NATS_PER_BIT = math.log(2)
CONTEXTS = 16  # 2**4 neighbour patterns


def binarise(images: np.ndarray) -> np.ndarray:
    """Grey images in [0, 1] -> float32 0/1."""
    return (images > BINARY_THRESHOLD).astype(np.float32)


def complexity_bits(binary: np.ndarray) -> np.ndarray:
    """Code length in bits of each 0/1 image (n, [1,] h, w) under the adaptive context model."""
    n = len(binary)
    x = binary.reshape(n, *binary.shape[-2:]).astype(np.int64)
    padded = np.pad(x, ((0, 0), (1, 0), (1, 1)))  # pixels off the image are 0
    west, north_west = padded[:, 1:, :-2], padded[:, :-1, :-2]
    north, north_east = padded[:, :-1, 1:-1], padded[:, :-1, 2:]
    context = (west + 2 * north_west + 4 * north + 8 * north_east).reshape(n, -1)
    pixels = x.reshape(n, -1)
    rows = np.arange(n)
    ones = np.zeros((n, CONTEXTS))  # per image and context: the 1s, and all pixels, coded so far
    seen = np.zeros((n, CONTEXTS))
    bits = np.zeros(n)
    for i in range(pixels.shape[1]):  # raster order
        c, pixel = context[:, i], pixels[:, i]
        p_one = (ones[rows, c] + 0.5) / (seen[rows, c] + 1.0)
        bits -= np.log2(np.where(pixel == 1, p_one, 1 - p_one))
        ones[rows, c] += pixel
        seen[rows, c] += 1
    return bits


def ood_scores(log_likelihood_nats: np.ndarray, complexity: np.ndarray) -> np.ndarray:
    """Serra et al.'s S(x) in bits per image: -log2 p(x) - L(x), from log p(x) in nats and L(x) in bits
    (`complexity_bits`)."""
    return (-np.asarray(log_likelihood_nats, np.float64).reshape(-1) / NATS_PER_BIT - complexity).astype(np.float32)
