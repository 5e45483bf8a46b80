"""LeNet-style MNIST classifier, trained on all 50k labels: the project's feature network for judging
generated images (FID in its feature space, classifier score, class accuracy; see latentserve/quality.py).

Two 5x5 convolution + max-pool blocks, a 128-unit hidden layer (the features) with dropout, ten logits.
Training shifts each image by up to `max_shift` pixels, a cheap augmentation that is worth ~0.2 points.
"""
import torch
from torch import nn
from torch.nn import functional as F

from latentserve.contract import CLASSIFY, IMAGE_SPEC, PROBABILITIES_SPEC, features_spec
from latentserve.datasets import CLASSES, Mnist
from training.augmentation import shift
from training.base import ExportGraph, Graph, LossModel, Losses, TrainConfig
from training.evaluation import error_rate


class LeNetConfig(TrainConfig):
    epochs: int = 12
    learning_rate_decay: float = 0.8  # 1e-3 down to 9e-5 (docs/training.md compares it with a constant rate)
    channels: int = 32
    features: int = 128
    dropout: float = 0.5
    max_shift: int = 2


class LeNet(LossModel):
    Config = LeNetConfig

    def __init__(self, config: LeNetConfig):
        super().__init__()
        self.config = config
        c = config.channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(c, 2 * c, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # 7x7
            nn.Flatten(), nn.Linear(2 * c * 49, config.features), nn.ReLU(),
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.features, CLASSES)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features)."""
        features = self.body(images)
        return self.head(self.dropout(features)), features

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)[0]

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> Losses:
        if self.training and self.config.max_shift:
            images = shift(images, self.config.max_shift)
        logits, _ = self(images)
        loss = F.cross_entropy(logits, labels)
        return Losses(loss, {"error": (logits.argmax(1) != labels).float().mean().item()})

    @torch.no_grad()
    def validate(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return {"error": error_rate(self.classify, images, labels)}

    @torch.no_grad()
    def preview(self, images: torch.Tensor) -> torch.Tensor:
        """The inputs with the shift augmentation the model trains on."""
        return torch.cat([images, shift(images, self.config.max_shift)])

    def graphs(self) -> dict[str, Graph]:
        return {
            "classifier": Graph(
                module=ExportGraph(self, _probabilities_and_features),
                inputs=(IMAGE_SPEC,),
                outputs=(PROBABILITIES_SPEC, features_spec(self.config.features)),
                capability=CLASSIFY,
            )
        }

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float]:
        test = torch.from_numpy(data.test.images[:, None])
        return {"test_error": error_rate(self.classify, test, torch.from_numpy(data.test.labels))}


def _probabilities_and_features(model: LeNet, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier graph."""
    logits, features = model(image)
    return torch.softmax(logits, 1), features
