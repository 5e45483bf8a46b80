"""Trained runs measured by their models' own `evaluate` (the figures a version's card would hold)."""
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from latentserve.datasets import load_mnist
from training.train import load_checkpoint, load_model


def evaluated_runs(checkpoints: list[Path], model_name: str) -> Iterator[tuple[Path, dict, nn.Module, dict]]:
    """(path, checkpoint, model, metrics) for each checkpoint, in order; none is an error at once."""
    if not checkpoints:
        raise SystemExit(f"name the {model_name} runs to measure (--checkpoints runs/{model_name}/checkpoint.pt ...)")
    return _evaluated(checkpoints)


def _evaluated(checkpoints: list[Path]) -> Iterator[tuple[Path, dict, nn.Module, dict]]:
    data = load_mnist()
    for path in checkpoints:
        checkpoint = load_checkpoint(path)
        model = load_model(checkpoint)
        yield path, checkpoint, model, model.evaluate(data)
