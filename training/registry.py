"""Models by name, and the pieces every model shares: its training config and its export signature.

A model class has `Config` (a `TrainConfig`), `optimizers()`, `train_step(images, labels, optimizers) ->
terms` and `validate(images, labels) -> terms` (what the training loop calls), `preview(images) -> images`
for the progress grid, `graphs() -> {graph name: Graph}` (what export writes to the model repository) and
`evaluate(data) -> metrics` (what its model card reports), and optionally `initialise(train_images,
train_labels)`, called once when a fresh run starts (to load or fit a frozen part; the labels as the run
sees them, hidden ones UNLABELLED). Models trained on one loss derive from
`LossModel` and define `loss(images, labels) -> Losses`; GANs define their own alternating steps.
"""
import functools
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 1e-3
    learning_rate_decay: float = 1.0  # epoch e (from 0) runs every optimizer at its starting rate * decay**e
    seed: int = 0


@dataclass
class Losses:
    total: torch.Tensor
    terms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: float32, uint8, int64
    dims: tuple[int, ...]  # without the batch axis


@dataclass(frozen=True)
class Graph:
    """One exported graph: a module whose forward takes `inputs` and returns `outputs`, in order."""

    module: torch.nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    capability: str  # what the gateway serves it for: "encode", "generate", "classify"
    classes: int = 0  # a class-conditional graph: its `label` input takes 0..classes-1


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    """One gradient step of `optimizer` on `loss`."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@torch.no_grad()
def update_average(average: nn.Module, live: nn.Module, decay: float) -> None:
    """Move `average`'s weights a step of 1 - `decay` towards `live`'s. Buffers are left alone: batch-norm
    statistics must fit the average's own weights, so a user with batch norm recomputes them (the GANs)."""
    for averaged, weight in zip(average.parameters(), live.parameters()):
        averaged.lerp_(weight, 1 - decay)


class LossModel(nn.Module):
    """A model trained by minimising `loss(images, labels)` with Adam."""

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": torch.optim.Adam(self.parameters(), lr=self.config.learning_rate)}

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, optimizers: dict) -> dict[str, float]:
        losses = self.loss(images, labels)
        optimizer_step(optimizers["model"], losses.total)
        return {"loss": losses.total.item(), **losses.terms}

    @torch.no_grad()
    def validate(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        total = sum(self.loss(x, y).total.item() * len(x) for x, y in zip(images.split(1000), labels.split(1000)))
        return {"loss": total / len(images)}


@functools.cache
def models() -> dict[str, type]:
    """Every trainable model by name (imported on first use: the model modules import this one)."""
    from training.autoencoder import ConvAutoencoder
    from training.classifier import LeNet
    from training.conv_vae import ConvVAE
    from training.gan import ACGAN, DCGAN, WGANGP
    from training.kingma import M1, M1M2, M2
    from training.self_training import EntropyMin, FixMatch, SelfTraining
    from training.translation import CycleGAN, Pix2Pix
    from training.vae import VAE

    return {
        "autoencoder": ConvAutoencoder, "vae": VAE, "lenet": LeNet,
        "conv_vae": ConvVAE, "dcgan": DCGAN, "wgan_gp": WGANGP, "acgan": ACGAN,
        "m1": M1, "m2": M2, "m1m2": M1M2,
        "pseudo_label": SelfTraining, "entropy_min": EntropyMin, "fixmatch": FixMatch,
        "pix2pix": Pix2Pix, "cyclegan": CycleGAN,
    }


def model_class(name: str) -> type:
    if name not in models():
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(models()))}")
    return models()[name]


def build(name: str, config: dict | None = None):
    cls = model_class(name)
    return cls(cls.Config(**(config or {})))
