"""Gated PixelCNN (van den Oord et al. 2016, "Conditional image generation with PixelCNN decoders") on
binarised MNIST: p(x) = prod_i p(x_i | x_<i) in raster order, one Bernoulli logit per pixel.

Binarisation: training images are binarised afresh each time they are seen (pixel ~ Bernoulli(grey
level), "dynamic binarisation"); the test likelihood is measured on one fixed binarisation of the test
set (seed 0), the same kind of data as the published figures (Salakhutdinov & Murray 2008's sampled
binarisation). The served graph scores what it is given: clients send 0/1 images (the gateway binarises
at 0.5).

Causality without masks: a vertical stack whose features at row r see only rows < r (its first output
is shifted down a row), and a horizontal stack whose features at (r, c) see row r left of c (its first
output is shifted right a pixel) plus the vertical stack at (r, c). The two stacks together have no
blind spot.
"""
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from latentserve.contract import DENSITY, IMAGE_SPEC, LOG_LIKELIHOOD_SPEC, PIXEL_LOGITS_SPEC
from latentserve.datasets import Mnist
from latentserve.density import binarise, bits_per_dim, complexity_bits, ood_scores
from training.base import ExportGraph, Graph, LossModel, Losses, TrainConfig

OOD_PERCENTILE = 99  # of validation images' scores: the flag's threshold


class PixelCNNConfig(TrainConfig):
    epochs: int = 10
    batch_size: int = 64
    channels: int = 32
    layers: int = 10  # gated blocks after the first
    kernel: int = 3  # width of the later blocks' convolutions (odd)
    first_kernel: int = 7
    learning_rate_decay: float = 0.9


def _down(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def _right(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (1, 0))[:, :, :, :-1]


class GatedBlock(nn.Module):
    """One gated layer of both stacks; `first` shifts so an output never sees its own pixel."""

    def __init__(self, in_channels: int, channels: int, kernel: int, first: bool):
        super().__init__()
        self.first, self.half = first, kernel // 2
        self.vertical = nn.Conv2d(in_channels, 2 * channels, (self.half + 1, kernel))
        self.horizontal = nn.Conv2d(in_channels, 2 * channels, (1, self.half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal_out = nn.Conv2d(channels, channels, 1)

    def forward(self, v: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v_pre = self.vertical(F.pad(v, (self.half, self.half, self.half, 0)))  # rows r - half .. r
        h_pre = self.horizontal(F.pad(h, (self.half, 0)))  # columns c - half .. c of row r
        if self.first:
            v_pre, h_pre = _down(v_pre), _right(h_pre)
        h_pre = h_pre + self.vertical_to_horizontal(v_pre)
        h_out = self.horizontal_out(_gate(h_pre))
        return _gate(v_pre), h_out if self.first else h + h_out


def _gate(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class PixelCNN(LossModel):
    Config = PixelCNNConfig

    def __init__(self, config: PixelCNNConfig):
        super().__init__()
        self.config = config
        c = config.channels
        self.blocks = nn.ModuleList(
            [GatedBlock(1, c, config.first_kernel, first=True)]
            + [GatedBlock(c, c, config.kernel, first=False) for _ in range(config.layers)]
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1), nn.ReLU(), nn.Conv2d(c, 1, 1))

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logit of p(pixel = 1 | the pixels before it), for every pixel of 0/1 `images` (N, 1, 28, 28)."""
        x = 2 * images - 1  # centred inputs; an unseen pixel contributes nothing either way
        v = h = x
        for block in self.blocks:
            v, h = block(v, h)
        return self.head(h)

    def log_likelihood(self, images: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats per image."""
        return _log_likelihood(self.logits(images), images)

    def loss(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> Losses:
        nll = -self.log_likelihood(torch.bernoulli(images)).mean()
        return Losses(nll, {"nll": nll.item()})

    @torch.no_grad()
    def validate(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        binary = torch.bernoulli(images, generator=torch.Generator().manual_seed(0))
        nll = -sum(self.log_likelihood(batch).sum().item() for batch in binary.split(500)) / len(images)
        return {"loss": nll, "nll": nll}

    @torch.no_grad()
    def sample(self, count: int, uniforms: torch.Tensor | None = None) -> torch.Tensor:
        """`count` images pixel by pixel; pixel i is 1 where its uniform draw is below p(x_i = 1 | x_<i)."""
        if uniforms is None:
            uniforms = torch.rand(count, 1, 28, 28, generator=torch.Generator().manual_seed(0))
        images = torch.zeros(count, 1, 28, 28)
        for row in range(28):
            for column in range(28):
                p = torch.sigmoid(self.logits(images)[:, :, row, column])
                images[:, :, row, column] = (uniforms[:, :, row, column] < p).float()
        return images

    @torch.no_grad()
    def preview(self, images: torch.Tensor) -> torch.Tensor:
        """Rows: binarised inputs, each pixel's predicted probability, samples."""
        binary = (images > 0.5).float()
        return torch.cat([binary, torch.sigmoid(self.logits(binary)), self.sample(len(images))])

    def graphs(self) -> dict[str, Graph]:
        return {
            "density": Graph(
                module=ExportGraph(self, _density),
                inputs=(IMAGE_SPEC,),
                outputs=(LOG_LIKELIHOOD_SPEC, PIXEL_LOGITS_SPEC),
                capability=DENSITY,
            )
        }

    @torch.no_grad()
    def log_likelihoods(self, binary: np.ndarray) -> np.ndarray:
        """log p(x) in nats of each 0/1 image (n, 1, 28, 28)."""
        return torch.cat([self.log_likelihood(batch) for batch in torch.from_numpy(binary).split(500)]).numpy()

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float]:
        """The test likelihood on a sampled binarisation (the published figures' data), the same on the
        test images as the gateway binarises them (at 0.5), and the out-of-distribution flag's threshold:
        the 99th percentile of the validation images' scores, so 1% of images like the training data are
        flagged."""
        test = torch.from_numpy(data.test.images[:, None])
        sampled = torch.bernoulli(test, generator=torch.Generator().manual_seed(0)).numpy()
        nll = -float(self.log_likelihoods(sampled).mean())
        thresholded_nll = -float(self.log_likelihoods(binarise(data.test.images[:, None])).mean())
        valid = binarise(data.valid.images[:, None])
        scores = ood_scores(self.log_likelihoods(valid), complexity_bits(valid))
        return {
            "test_nll_nats": nll,
            "test_bits_per_dim": bits_per_dim(-nll),
            "test_nll_nats_thresholded": thresholded_nll,
            "ood_threshold": float(np.percentile(scores, OOD_PERCENTILE)),
        }


def _density(model: PixelCNN, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The density graph: log p(x) in nats for 0/1 images, and every pixel's conditional logit (what
    the gateway's sampling loop reads)."""
    logits = model.logits(image)
    return _log_likelihood(logits, image)[:, None], logits


def _log_likelihood(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """sum_i log p(x_i | x_<i) with log sigmoid(l) = -softplus(-l): ONNX's Softplus is as stable as
    PyTorch's cross-entropy at confident logits, where log(sigmoid(l)) underflows."""
    return -(images * F.softplus(-logits) + (1 - images) * F.softplus(logits)).sum((1, 2, 3))
