"""PixelCNN's contracts: causality, an exact likelihood, sampling from its own conditionals."""
import pytest
import torch
from torch.nn import functional as F

from training.pixelcnn import PixelCNN, PixelCNNConfig


@pytest.fixture
def model():
    torch.manual_seed(0)
    return PixelCNN(PixelCNNConfig(channels=8, layers=3, kernel=3, first_kernel=5)).eval()


@pytest.mark.parametrize("row, column", [(0, 0), (0, 27), (5, 7), (13, 0), (27, 27)])
def test_a_pixels_logit_depends_only_on_the_pixels_before_it(model, row, column):
    images = torch.bernoulli(torch.full((1, 1, 28, 28), 0.5)).requires_grad_()
    (gradient,) = torch.autograd.grad(model.logits(images)[0, 0, row, column], images)
    reached = gradient[0, 0].abs() > 0
    order = torch.arange(784).reshape(28, 28)
    assert not reached[order >= row * 28 + column].any()
    if (row, column) != (0, 0):
        assert reached[order < row * 28 + column].any()
        left_or_above = (row, column - 1) if column else (row - 1, column)
        assert reached[left_or_above]  # the nearest pixels are seen: no blind spot beside it


def test_the_first_pixel_sees_nothing(model):
    a, b = torch.zeros(1, 1, 28, 28), torch.ones(1, 1, 28, 28)
    assert model.logits(a)[0, 0, 0, 0] == model.logits(b)[0, 0, 0, 0]


def test_the_log_likelihood_is_the_sum_of_the_pixels_conditionals(model):
    images = torch.bernoulli(torch.full((3, 1, 28, 28), 0.3))
    logits = model.logits(images)
    want = (images * F.logsigmoid(logits) + (1 - images) * F.logsigmoid(-logits)).sum((1, 2, 3))
    torch.testing.assert_close(model.log_likelihood(images), want)


def test_samples_are_draws_from_the_conditionals_they_replay(model):
    uniforms = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    samples = model.sample(2, uniforms)
    probabilities = torch.sigmoid(model.logits(samples))  # each conditional sees only the pixels before it, all final
    assert torch.equal(samples, (uniforms < probabilities).float())


def test_the_density_graph_gives_the_likelihood_and_the_logits(model):
    images = torch.bernoulli(torch.full((4, 1, 28, 28), 0.2))
    log_likelihood, logits = model.graphs()["density"].module(images)
    torch.testing.assert_close(log_likelihood[:, 0], model.log_likelihood(images))
    torch.testing.assert_close(logits, model.logits(images))
