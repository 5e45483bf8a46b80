"""Sample-set measures that judge diversity and realism apart, each beside its real-data value:

- MS-SSIM over pairs of samples (Wang et al. 2003; as a diversity measure, Odena et al. 2017): how alike
  two images of one set are, 1 for identical ones, so a lower mean is a more varied set.
- Sliced Wasserstein distance between the sets' Laplacian-pyramid patches (Karras et al. 2018, "Progressive
  growing of GANs", section 5): how far the local image statistics of the two sets are apart, per level.
- Memorisation: each sample's distance to its nearest training image, against the same distance for real
  test images (which the model never saw), and the closest pairs to look at.

On 28x28 digits the standard five MS-SSIM scales and Karras et al.'s pyramid down to 16x16 do not fit:
both use the three levels 28, 14 and 7 (MS-SSIM renormalises the first three of its five exponents).
"""
import functools

import numpy as np
from scipy.ndimage import convolve, gaussian_filter

from latentserve.datasets import Mnist

# Wang et al. 2003's exponents for scales 1..5; the first three, renormalised, for 28, 14 and 7 pixels
_MS_SSIM_WEIGHTS = np.array([0.0448, 0.2856, 0.3001]) / (0.0448 + 0.2856 + 0.3001)
_BINOMIAL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0  # the pyramid's 5x5 low-pass filter
LEVEL_SIZES = (28, 14, 7)  # the pyramid's levels
PATCH = 7  # Karras et al.'s 7x7 neighbourhoods
PATCHES_PER_IMAGE = 16  # Karras et al. take 128 of 16k images; 16 of 10k keep a table's row to seconds
SWD_DIRECTIONS = 128
SWD_REPEATS = 4  # Karras et al.: 4 repeats of 128 random directions
PAIRS = 2000  # MS-SSIM pairs per set (per class for a conditional model)


def ssim_maps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SSIM's luminance and contrast-structure maps (Wang et al. 2004) of float images (n, h, w) in [0, 1]:
    11x11 Gaussian window (sigma 1.5), K1 0.01, K2 0.03, borders reflected."""
    def blur(x):
        return gaussian_filter(x, sigma=(0, 1.5, 1.5), truncate=3.5)  # radius 5: an 11x11 window

    mean_a, mean_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mean_a**2, blur(b * b) - mean_b**2, blur(a * b) - mean_a * mean_b
    c1, c2 = 0.01**2, 0.03**2
    return (2 * mean_a * mean_b + c1) / (mean_a**2 + mean_b**2 + c1), (2 * cov + c2) / (var_a + var_b + c2)


def _downsample(images: np.ndarray) -> np.ndarray:
    """Low-pass with the binomial filter, then every other pixel: (n, h, w) -> (n, h/2, w/2)."""
    return convolve(images, _BINOMIAL[None], mode="reflect")[:, ::2, ::2]


def _upsample(images: np.ndarray) -> np.ndarray:
    """Zeros between the pixels, then the binomial filter (x4 for the zeros): (n, h, w) -> (n, 2h, 2w)."""
    n, h, w = images.shape
    spread = np.zeros((n, 2 * h, 2 * w), dtype=images.dtype)
    spread[:, ::2, ::2] = images
    return convolve(spread, 4 * _BINOMIAL[None], mode="reflect")


def ms_ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pair MS-SSIM of images in [0, 1], shapes (n, 1, 28, 28) or (n, 28, 28): the contrast-structure
    term at every level, SSIM itself at the coarsest, each level averaged over 2x2 pixels for the next.
    Negative terms count as 0 (they would make the product meaningless)."""
    a, b = (x.reshape(len(x), 28, 28).astype(np.float64) for x in (a, b))
    result = np.ones(len(a))
    for level, weight in enumerate(_MS_SSIM_WEIGHTS):
        luminance, contrast_structure = ssim_maps(a, b)
        coarsest = level == len(_MS_SSIM_WEIGHTS) - 1
        term = (luminance * contrast_structure if coarsest else contrast_structure).mean((1, 2))
        result *= np.clip(term, 0, None) ** weight
        if not coarsest:
            a, b = (x.reshape(len(x), x.shape[1] // 2, 2, x.shape[2] // 2, 2).mean((2, 4)) for x in (a, b))
    return result


def mean_pair_ms_ssim(images: np.ndarray, labels: np.ndarray | None = None, pairs: int = PAIRS, seed: int = 0) -> float:
    """Mean MS-SSIM over `pairs` random pairs of distinct images; with `labels`, over pairs within each
    class, averaged over the classes (the conditional models' diversity, as Odena et al. measure it)."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(len(images))] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    means = []
    for group in groups:
        first = rng.choice(group, pairs)
        second = rng.choice(group, pairs)
        distinct = first != second
        means.append(ms_ssim(images[first[distinct]], images[second[distinct]]).mean())
    return float(np.mean(means))


def laplacian_pyramid(images: np.ndarray) -> list[np.ndarray]:
    """Band-pass levels, finest first, then the low-pass residue: 28x28 -> [28x28, 14x14, 7x7]."""
    current = images.reshape(len(images), 28, 28).astype(np.float64)
    pyramid = []
    for _ in LEVEL_SIZES[1:]:
        smaller = _downsample(current)
        pyramid.append(current - _upsample(smaller))
        current = smaller
    return pyramid + [current]


def pyramid_descriptors(images: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """Per level: PATCHES_PER_IMAGE 7x7 patches of each image at random positions (the whole level when it
    is 7x7), flattened and normalised by the set's mean and standard deviation at that level."""
    rng = np.random.default_rng(seed)
    descriptors = []
    for level in laplacian_pyramid(images):
        n, size, _ = level.shape
        positions = size - PATCH + 1
        count = min(PATCHES_PER_IMAGE, positions * positions)
        rows, columns = rng.integers(0, positions, (2, n, count))
        offsets = np.arange(PATCH)
        patches = level[
            np.arange(n)[:, None, None, None],
            rows[:, :, None, None] + offsets[None, None, :, None],
            columns[:, :, None, None] + offsets[None, None, None, :],
        ].reshape(n * count, PATCH * PATCH)
        descriptors.append((patches - patches.mean()) / max(patches.std(), 1e-8))  # a blank set has no spread
    return descriptors


def sliced_wasserstein(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """Sliced Wasserstein distance between two equal-sized descriptor sets: the mean, over SWD_REPEATS sets
    of SWD_DIRECTIONS random unit directions, of the mean absolute difference of the sorted projections."""
    if len(a) != len(b):
        raise ValueError(f"descriptor sets differ in size: {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    a, b = a.astype(np.float32), b.astype(np.float32)
    distances = []
    for _ in range(SWD_REPEATS):
        units = rng.standard_normal((a.shape[1], SWD_DIRECTIONS)).astype(np.float32)
        units /= np.linalg.norm(units, axis=0)
        distances.append(np.abs(np.sort(a @ units, axis=0) - np.sort(b @ units, axis=0)).mean())
    return float(np.mean(distances))


def swd(images: np.ndarray, reference: np.ndarray, seed: int = 0) -> list[float]:
    """SWD x 1000 (Karras et al.'s unit) per pyramid level, finest first, between the first n images of
    each set, n the smaller set's size (the distance's bias depends on n)."""
    n = min(len(images), len(reference))
    images, reference = images[:n], reference[:n]
    return [
        1000 * sliced_wasserstein(a, b, seed=seed)
        for a, b in zip(pyramid_descriptors(images, seed), pyramid_descriptors(reference, seed + 1))
    ]


def nearest_distances(images: np.ndarray, training: np.ndarray, batch: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """(Euclidean pixel distance of each image to its nearest training image, that image's index)."""
    flat_training = training.reshape(len(training), -1).astype(np.float32)
    training_norms = (flat_training**2).sum(1)
    distances, indices = [], []
    for start in range(0, len(images), batch):
        flat = images[start : start + batch].reshape(-1, flat_training.shape[1]).astype(np.float32)
        squared = (flat**2).sum(1)[:, None] - 2 * flat @ flat_training.T + training_norms[None]
        nearest = squared.argmin(1)
        indices.append(nearest)
        exact = ((flat - flat_training[nearest]) ** 2).sum(1)  # recomputed: the expansion loses digits near 0
        distances.append(np.sqrt(exact))
    return np.concatenate(distances), np.concatenate(indices)


def memorisation(sample_distances: np.ndarray, real_distances: np.ndarray) -> dict[str, float]:
    """Nearest-training-image distances of the samples beside those of real images the model never saw:
    their medians, and the share of samples nearer to a training image than 99% of real images are
    (about 1% for a model that does not copy)."""
    return {
        "nearest_training_median": float(np.median(sample_distances)),
        "nearest_training_median_real": float(np.median(real_distances)),
        "nearer_than_real_1st_percentile": float((sample_distances < np.percentile(real_distances, 1)).mean()),
    }


@functools.cache  # an evaluation scores several models against one dataset
def _test_nearest_distances(data: Mnist) -> np.ndarray:
    """Each test image's distance to its nearest training image."""
    return nearest_distances(data.test.images, data.train.images)[0]


def sample_measures(images: np.ndarray, labels: np.ndarray | None, data: Mnist,
                    nearest: tuple[np.ndarray, np.ndarray]) -> dict[str, float]:
    """A generator's samples measured against real digits: pair MS-SSIM (within each requested class when
    `labels` are given), SWD x 1000 per pyramid level to the test images, and the memorisation check
    against the training images, with the test images as the unseen reference. `nearest`: the samples'
    `nearest_distances` to the training images (callers that draw the closest pairs reuse them)."""
    return {
        "ms_ssim": mean_pair_ms_ssim(images, labels),
        **{f"swd_{size}": value for size, value in zip(LEVEL_SIZES, swd(images, data.test.images))},
        **memorisation(nearest[0], _test_nearest_distances(data)),
    }


@functools.cache  # as above (the dict is shared: read it, do not change it)
def real_measures(data: Mnist, samples: int, conditional: bool) -> dict[str, float]:
    """The same measures for real digits: pair MS-SSIM of test images (within their classes for a
    conditional model's comparison), and SWD between `samples` training and as many test images."""
    return {
        "ms_ssim": mean_pair_ms_ssim(data.test.images, data.test.labels if conditional else None),
        **{f"swd_{size}": value for size, value in zip(LEVEL_SIZES, swd(data.train.images[:samples], data.test.images[:samples]))},
    }


def closest_pairs(images: np.ndarray, training: np.ndarray, nearest: tuple[np.ndarray, np.ndarray], count: int = 16) -> np.ndarray:
    """The `count` images nearest to a training image, and below them those training images: (2 * count,
    1, 28, 28), for a grid of two rows. `nearest`: `nearest_distances(images, training)`."""
    distances, indices = nearest
    closest = np.argsort(distances)[:count]
    shape = (count, 1, 28, 28)
    return np.concatenate([images[closest].reshape(shape), training[indices[closest]].reshape(shape)])
