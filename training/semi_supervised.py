"""The semi-supervised protocol every method trains under, and what their classifiers share.

Protocol (docs/benchmarks.md): `labels_per_class` labelled images per class (10: the 100-label benchmark)
drawn from the 50k training images by `data_seed`, which is separate from the initialisation `seed`; the
other training images lose their labels (-1) before the model sees a batch. Every batch holds
`batch_size` images of the shuffled training set (labelled or not) plus `labelled_batch_size` images drawn
from the labelled ones, so each step has labels to learn from. The validation labels serve model
selection only; errors are reported on the test set.
"""
import numpy as np
import torch
from torch import nn

from latentserve.contract import CLASSIFY, IMAGE_SPEC, PROBABILITIES_SPEC
from latentserve.datasets import CLASSES
from training.base import ExportGraph, Graph, TrainConfig

UNLABELLED = -1


class SemiSupervisedConfig(TrainConfig):
    labels_per_class: int = 10
    data_seed: int = 0
    labelled_batch_size: int = 100


def labelled_indices(labels: np.ndarray, per_class: int, data_seed: int) -> np.ndarray:
    """`per_class` indices of each class, drawn without replacement by `data_seed`, sorted."""
    rng = np.random.default_rng(data_seed)
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(CLASSES)]
    return np.sort(np.concatenate(chosen))


def hide_labels(labels: torch.Tensor, config: SemiSupervisedConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels with every unchosen one set to UNLABELLED, the chosen indices)."""
    chosen = torch.from_numpy(labelled_indices(labels.numpy(), config.labels_per_class, config.data_seed))
    hidden = torch.full_like(labels, UNLABELLED)
    hidden[chosen] = labels[chosen]
    return hidden, chosen


def classifier_graph(model: nn.Module) -> Graph:
    """The served graph of a semi-supervised model: `model.classify` maps images to class logits."""
    return Graph(
        module=ExportGraph(model, lambda model, image: (torch.softmax(model.classify(image), 1),)),
        inputs=(IMAGE_SPEC,),
        outputs=(PROBABILITIES_SPEC,),
        capability=CLASSIFY,
    )
