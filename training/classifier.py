"""LeNet-style MNIST classifier, trained on all 50k labels: the project's feature network for judging
generated images (FID in its feature space, classifier score, class accuracy; see latentserve/quality.py).

Two 5x5 convolution + max-pool blocks, a 128-unit hidden layer (the features) with dropout, ten logits.
Training shifts each image by up to `max_shift` pixels, a cheap augmentation that is worth ~0.2 points.
"""
import torch
from torch import nn
from torch.nn import functional as F

from latentserve.datasets import CLASSES, Mnist
from training.registry import Graph, LossModel, Losses, TensorSpec, TrainConfig


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
                module=_ClassifierGraph(self),
                inputs=(TensorSpec("image", "float32", (1, 28, 28)),),
                outputs=(
                    TensorSpec("probabilities", "float32", (CLASSES,)),
                    TensorSpec("features", "float32", (self.config.features,)),
                ),
                capability="classify",
            )
        }

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float]:
        test = torch.from_numpy(data.test.images[:, None])
        return {"test_error": error_rate(self.classify, test, torch.from_numpy(data.test.labels))}


@torch.no_grad()
def error_rate(classify, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The share of `images` whose largest logit from `classify` is not their label."""
    wrong = sum((classify(x).argmax(1) != y).sum().item() for x, y in zip(images.split(1000), labels.split(1000)))
    return wrong / len(images)


def shift(images: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Each image moved by its own random offset in [-max_shift, max_shift]^2, zero-filled."""
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n))
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


class _ClassifierGraph(nn.Module):
    def __init__(self, model: LeNet):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        logits, features = self.model(image)
        return torch.softmax(logits, 1), features
