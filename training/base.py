"""What every model is built from: its training config, its loss terms, its export signature.

A model class has `Config` (a `TrainConfig`), `optimizers()`, `train_step(images, labels, optimizers) ->
terms` and `validate(images, labels) -> terms` (what the training loop calls), `preview(images) -> images`
for the progress grid, `graphs() -> {graph name: Graph}` (what export writes to the model repository) and
`evaluate(data) -> metrics` (what its model card reports), and optionally `initialise(train_images,
train_labels)`, called once when a fresh run starts (to load or fit a frozen part; the labels as the run
sees them, hidden ones UNLABELLED). Models trained on one loss derive from
`LossModel` and define `loss(images, labels) -> Losses`; GANs define their own alternating steps.
"""
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from latentserve.contract import ENCODE, IMAGE_SPEC, TensorSpec, binary_code_spec, code_spec


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
class Graph:
    """One exported graph: a module whose forward takes `inputs` and returns `outputs`, in order."""

    module: nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    capability: str  # what the gateway serves it for: one of latentserve.contract.CAPABILITIES
    classes: int = 0  # a class-conditional graph: its `label` input takes 0..classes-1


class ExportGraph(nn.Module):
    """A graph's module: `serve(model, *inputs)` -> the outputs as a tuple. `model` is a submodule, so
    export sees its weights and `eval()` reaches it."""

    def __init__(self, model: nn.Module, serve: Callable[..., tuple[torch.Tensor, ...]]):
        super().__init__()
        self.model = model
        self.serve = serve

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.serve(self.model, *inputs)


def encoder_graph(model: nn.Module, codes: Callable[..., tuple[torch.Tensor, torch.Tensor]], code_dim: int,
                  bits: int | None = None) -> Graph:
    """The graph an encoder exports: an image in; `codes(model, image)` out, the code (`code_dim` floats)
    and its binary code as 0/1 (`bits`, by default one a code element)."""
    return Graph(module=ExportGraph(model, codes), inputs=(IMAGE_SPEC,),
                 outputs=(code_spec(code_dim), binary_code_spec(bits or code_dim)), capability=ENCODE)


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
