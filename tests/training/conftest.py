"""What the model tests train and validate on: a few MNIST training images and their labels."""
import pytest
import torch


@pytest.fixture
def images(mnist):
    return torch.from_numpy(mnist.train.images[:16, None])


@pytest.fixture
def labels(mnist):
    return torch.from_numpy(mnist.train.labels[:16]).long()
