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

from latentserve.contract import PIXELS

BINARY_THRESHOLD = 0.5  # the gateway scores images binarised at this grey level
NATS_PER_BIT = math.log(2)
CONTEXTS = 16  # 2**4 neighbour patterns
COUNT_BITS = 12  # room for 4096 pixels' counts
CHUNK_IMAGES = 64  # images coded at once: their (images, pixels, contexts) counts stay in cache


def binarise(images: np.ndarray) -> np.ndarray:
    """Grey images in [0, 1] -> float32 0/1."""
    return (images > BINARY_THRESHOLD).astype(np.float32)


def complexity_bits(binary: np.ndarray) -> np.ndarray:
    """Code length in bits of each 0/1 image (n, [1,] h, w) under the adaptive context model."""
    return np.concatenate([_complexity_bits(chunk) for chunk in np.split(binary, range(CHUNK_IMAGES, len(binary), CHUNK_IMAGES))])


def _complexity_bits(binary: np.ndarray) -> np.ndarray:
    n = len(binary)
    x = binary.reshape(n, *binary.shape[-2:]).astype(np.int64)
    padded = np.pad(x, ((0, 0), (1, 0), (1, 1)))  # pixels off the image are 0
    west, north_west = padded[:, 1:, :-2], padded[:, :-1, :-2]
    north, north_east = padded[:, :-1, 1:-1], padded[:, :-1, 2:]
    context = (west + 2 * north_west + 4 * north + 8 * north_east).reshape(n, -1)
    pixels = x.reshape(n, -1)
    # per pixel, its context's earlier pixels and earlier 1s: an exclusive cumulative sum in raster order
    # of one-hot contexts, the two counts packed in one integer (1s above bit COUNT_BITS)
    weights = (context[:, :, None] == np.arange(CONTEXTS)) * (1 + (pixels[:, :, None] << COUNT_BITS)).astype(np.int32)
    counts = np.take_along_axis(np.cumsum(weights, axis=1) - weights, context[:, :, None], 2)[..., 0]
    seen, ones = counts & ((1 << COUNT_BITS) - 1), counts >> COUNT_BITS
    p_one = (ones + 0.5) / (seen + 1.0)
    return -np.log2(np.where(pixels == 1, p_one, 1 - p_one)).sum(1)


def bits_per_dim(log_likelihood_nats: np.ndarray | float) -> np.ndarray | float:
    """-log2 p(x) per pixel, from log p(x) in nats."""
    return -log_likelihood_nats / NATS_PER_BIT / PIXELS


def ood_scores(log_likelihood_nats: np.ndarray, complexity: np.ndarray) -> np.ndarray:
    """Serra et al.'s S(x) in bits per image: -log2 p(x) - L(x), from log p(x) in nats and L(x) in bits
    (`complexity_bits`)."""
    return (-np.asarray(log_likelihood_nats, np.float64).reshape(-1) / NATS_PER_BIT - complexity).astype(np.float32)
