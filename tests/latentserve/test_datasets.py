"""MNIST loading: the pinned bundled file, and standard IDX files from a directory."""
import gzip

import numpy as np
import pytest

from latentserve import datasets
from latentserve.datasets import BUNDLED_SHA256, load_mnist


def test_bundled_splits_are_kingmas(mnist):
    assert (len(mnist.train.labels), len(mnist.valid.labels), len(mnist.test.labels)) == (50000, 10000, 10000)
    assert mnist.train.images.shape[1:] == (28, 28) and mnist.train.images.dtype == np.float32
    assert 0 <= mnist.test.images.min() and mnist.test.images.max() <= 1
    assert set(np.unique(mnist.test.labels)) == set(range(10))
    assert mnist.sha256 == BUNDLED_SHA256


def test_a_bundled_file_with_another_checksum_is_refused(monkeypatch):
    monkeypatch.setattr(datasets, "BUNDLED_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="does not match"):
        load_mnist()


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_idx_files_plain_or_gzipped(tmp_path):
    rng = np.random.default_rng(0)
    train_x, test_x = rng.integers(0, 256, (60010, 28, 28)), rng.integers(0, 256, (7, 28, 28))
    train_y, test_y = rng.integers(0, 10, 60010), rng.integers(0, 10, 7)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx(train_x))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(train_y)))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(test_x))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(test_y))
    data = load_mnist(tmp_path)
    assert (len(data.train.labels), len(data.valid.labels), len(data.test.labels)) == (50000, 10010, 7)
    np.testing.assert_allclose(data.valid.images[-1], train_x[-1] / 255, atol=1e-7)
    np.testing.assert_array_equal(data.test.labels, test_y)
    assert data.sha256 != BUNDLED_SHA256 and "IDX" in data.source
