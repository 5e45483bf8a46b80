"""Models by name, and the pieces every model shares: its training config and its export signature.

A model class has `Config` (a `TrainConfig`), `loss(images) -> Losses`, `preview(images) -> images` for the
progress grid, `graphs() -> {graph name: Graph}` (what export writes to the model repository) and
`evaluate(data) -> metrics` (what its model card reports).
"""
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 1e-3
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
    capability: str  # what the gateway serves it for: "encode", ...


def _models() -> dict[str, type]:
    from training.autoencoder import ConvAutoencoder
    from training.vae import VAE

    return {"autoencoder": ConvAutoencoder, "vae": VAE}


MODELS: dict[str, type] = _models()


def model_class(name: str) -> type:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build(name: str, config: dict | None = None):
    cls = model_class(name)
    return cls(cls.Config(**(config or {})))
