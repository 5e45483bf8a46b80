"""The image domains of the translation tasks, all as (n, 1, 28, 28) float32 in [0, 1] like MNIST.

- Edge maps (the source of `edges2digit`): the pixels just outside a digit, i.e. the outer boundary of its
  strokes thresholded at 0.5, 4-neighbour. Computed from MNIST here; a client can draw them.
- UCI optical digits (the other side of `mnist2uci` / `uci2mnist`): scikit-learn's bundled copy of the UCI
  handwritten digits (8x8 scans of 0..16 by writers other than MNIST's; nothing is downloaded), upsampled
  bilinearly to a 20x20 box centred in 28x28, which is how MNIST frames its digits. Split by a fixed
  permutation into 1,297 training and 500 test scans.
The UCI classifier that scores translations into the UCI domain is an RBF SVM on the 8x8 scans (the
domain's own resolution), fitted on the training split.
"""
import functools
import hashlib
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from sklearn.datasets import load_digits
from sklearn.svm import SVC

from serving.mnist import Split

UCI_TEST_SCANS = 500
BOX, SIZE, SCAN, SCAN_MAX = 20, 28, 8, 16.0
MARGIN = (SIZE - BOX) // 2


def edge_map(images: np.ndarray) -> np.ndarray:
    """Images (..., 28, 28) in [0, 1] -> their edge maps, 0 or 1, same shape."""
    digit = images > 0.5
    pad = [(0, 0)] * (digit.ndim - 2) + [(1, 1), (1, 1)]
    p = np.pad(digit, pad)
    grown = digit | p[..., :-2, 1:-1] | p[..., 2:, 1:-1] | p[..., 1:-1, :-2] | p[..., 1:-1, 2:]
    return (grown & ~digit).astype(np.float32)


@dataclass(frozen=True)
class UciDigits:
    train: Split  # images (n, 28, 28) in the MNIST-like frame
    test: Split
    sha256: str  # of the 8x8 scans and labels as bundled


@functools.cache
def load_uci_digits() -> UciDigits:
    bundle = load_digits()
    scans, labels = bundle.images.astype(np.float32), bundle.target.astype(np.int64)
    sha = hashlib.sha256(scans.tobytes() + labels.tobytes()).hexdigest()
    order = np.random.default_rng(0).permutation(len(scans))
    images = from_scans(scans)
    test, train = order[:UCI_TEST_SCANS], order[UCI_TEST_SCANS:]
    return UciDigits(Split(images[train], labels[train]), Split(images[test], labels[test]), sha)


def from_scans(scans: np.ndarray) -> np.ndarray:
    """8x8 scans of 0..16 -> (n, 28, 28) images in [0, 1], the digit in the central 20x20 box."""
    images = np.zeros((len(scans), SIZE, SIZE), np.float32)
    for image, scan in zip(images, scans):
        box = PILImage.fromarray(scan / SCAN_MAX, mode="F").resize((BOX, BOX), PILImage.Resampling.BILINEAR)
        image[MARGIN : MARGIN + BOX, MARGIN : MARGIN + BOX] = np.clip(np.asarray(box), 0, 1)
    return images


@functools.cache
def scan_weights() -> np.ndarray:
    """(8, 20): how each of a scan's 8 cells along an axis weighs the central box's 20 pixels. It is
    PIL's BOX resize from 20 to 8, read off by resizing each unit pixel; the filter is separable, so a
    scan is W @ box @ W.T (the form a translator's training can differentiate, training/translation.py)."""
    pixels = np.eye(BOX, dtype=np.float32)
    rows = [PILImage.fromarray(pixel[None], mode="F").resize((SCAN, 1), PILImage.Resampling.BOX) for pixel in pixels]
    return np.stack([np.asarray(row)[0] for row in rows], 1)


def to_scans(images: np.ndarray) -> np.ndarray:
    """(n, [1,] 28, 28) images -> (n, 64) scans of 0..16: the central box averaged down to 8x8."""
    boxes = images.reshape(len(images), SIZE, SIZE)[:, MARGIN : MARGIN + BOX, MARGIN : MARGIN + BOX]
    weights = scan_weights()
    return np.einsum("ij,njk,lk->nil", weights, boxes, weights).reshape(len(images), -1) * SCAN_MAX


@functools.cache
def uci_classifier() -> SVC:
    """Predicts digits of UCI-domain images from their scans (`to_scans`)."""
    train = load_uci_digits().train
    return SVC(gamma=0.001).fit(to_scans(train.images), train.labels)
