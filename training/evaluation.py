"""What the models' cards report, measured the same way for every model: classification error,
retrieval scores of an encoder graph, sample quality of a generator graph."""
import numpy as np
import torch
from torch import nn

from latentserve.contract import LATENT
from latentserve.datasets import Mnist
from latentserve.quality import evaluate_generator
from training import retrieval
from training.base import Graph


@torch.no_grad()
def error_rate(classify, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of `images` whose largest logit from `classify` is not their label."""
    wrong = sum((classify(x).argmax(1) != y).sum().item() for x, y in zip(images.split(1000), labels.split(1000)))
    return wrong / len(images)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, data: Mnist) -> dict[str, float]:
    """What a semi-supervised model's card reports: its error on the validation and the test set."""
    return {
        f"{name}_error": error_rate(model.classify, torch.from_numpy(split.images[:, None]), torch.from_numpy(split.labels))
        for name, split in (("valid", data.valid), ("test", data.test))
    }


@torch.no_grad()
def encoder_retrieval(encoder: nn.Module, data: Mnist) -> dict[str, float]:
    """Retrieval scores of an encoder graph (image -> code, binary_code) on the standard protocol."""
    split = retrieval.protocol(data)

    def encode(images: np.ndarray):
        outputs = [encoder(torch.from_numpy(batch[:, None])) for batch in np.array_split(images, len(images) // 1000 + 1)]
        return tuple(torch.cat(parts).numpy() for parts in zip(*outputs))

    query_code, query_bits = encode(split.queries)
    gallery_code, gallery_bits = encode(split.gallery)
    real = retrieval.retrieval_scores(
        retrieval.l2_distances(query_code, gallery_code), split.query_labels, split.gallery_labels
    )
    binary = retrieval.retrieval_scores(
        retrieval.hamming_distances(query_bits, gallery_bits), split.query_labels, split.gallery_labels
    )
    return {
        **{f"retrieval_code_{key}": value for key, value in real.items()},
        **{f"retrieval_bits_{key}": value for key, value in binary.items()},
    }


@torch.no_grad()
def evaluate_generator_graph(graph: Graph, data: Mnist) -> dict[str, float]:
    """Sample quality of a generator graph, on the same latents and labels the gateway would feed it."""

    def run(inputs: dict) -> np.ndarray:
        return graph.module(*(torch.from_numpy(inputs[spec.name]) for spec in graph.inputs))[0].numpy()

    latent_dim = next(spec.dims[0] for spec in graph.inputs if spec.name == LATENT)
    return evaluate_generator(run, latent_dim, graph.classes, data, diversity=True)
