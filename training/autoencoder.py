"""Convolutional autoencoder with a real-valued code and a binary hash code.

The decoder has no batch norm: it serves two input distributions (codes and hash signs), and shared
running statistics would fit neither in eval mode. The hash head maps the code to `hash_bits` tanh units; a second decoder pass reconstructs the image from
their signs (straight-through gradient), and a quantisation term pulls the units towards +-1 so that the
served bits (unit > 0) lose little. A balance term keeps each bit near 50% on.
"""
import torch
from torch import nn
from torch.nn import functional as F

from latentserve.datasets import Mnist
from training.base import Graph, LossModel, Losses, TrainConfig, encoder_graph
from training.evaluation import encoder_retrieval


class AutoencoderConfig(TrainConfig):
    epochs: int = 15
    code_dim: int = 32
    hash_bits: int = 32
    channels: int = 32
    noise_std: float = 0.3  # > 0: denoising autoencoder (Gaussian input noise, clipped to [0, 1]); 0: plain
    hash_weight: float = 1.0
    quantization_weight: float = 0.1
    balance_weight: float = 0.1


class ConvAutoencoder(LossModel):
    Config = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        c = config.channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c, 4, 2, 1), nn.ReLU(),  # 14x14
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.BatchNorm2d(2 * c), nn.ReLU(),  # 7x7
            nn.Flatten(), nn.Linear(2 * c * 49, config.code_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(config.code_dim, 2 * c * 49), nn.ReLU(), nn.Unflatten(1, (2 * c, 7, 7)),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(c, 1, 4, 2, 1),  # logits
        )
        self.hash_head = nn.Linear(config.code_dim, config.hash_bits)
        self.hash_to_code = nn.Linear(config.hash_bits, config.code_dim)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def hash(self, code: torch.Tensor) -> torch.Tensor:
        """Near-binary units in (-1, 1); the served bit is unit > 0."""
        return torch.tanh(self.hash_head(code))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(code))

    def decode_bits(self, units: torch.Tensor) -> torch.Tensor:
        signs = units + (torch.sign(units) - units).detach()  # straight-through
        return self.decoder(self.hash_to_code(signs))

    def loss(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> Losses:
        cfg = self.config
        noisy = images
        if cfg.noise_std > 0:
            noisy = (images + cfg.noise_std * torch.randn_like(images)).clamp(0, 1)
        code = self.encode(noisy)
        units = self.hash(code)
        reconstruction = F.binary_cross_entropy_with_logits(self.decoder(code), images, reduction="sum") / len(images)
        hash_reconstruction = (
            F.binary_cross_entropy_with_logits(self.decode_bits(units), images, reduction="sum") / len(images)
        )
        quantization = ((units.abs() - 1) ** 2).mean()
        balance = (units.mean(0) ** 2).mean()
        total = (
            reconstruction
            + cfg.hash_weight * hash_reconstruction
            + cfg.quantization_weight * quantization * images[0].numel()
            + cfg.balance_weight * balance * images[0].numel()
        )
        return Losses(total, {
            "reconstruction": reconstruction.item(),
            "hash_reconstruction": hash_reconstruction.item(),
            "quantization": quantization.item(),
            "balance": balance.item(),
        })

    @torch.no_grad()
    def preview(self, images: torch.Tensor) -> torch.Tensor:
        """Rows: inputs, reconstructions from the code, reconstructions from the bits."""
        code = self.encode(images)
        return torch.cat([images, self.decode(code), torch.sigmoid(self.decode_bits(self.hash(code)))])

    def graphs(self) -> dict[str, Graph]:
        return {
            "encoder": encoder_graph(self, _codes, self.config.code_dim, self.config.hash_bits)
        }

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float]:
        test = torch.from_numpy(data.test.images[:, None])
        reconstruction = sum(
            F.binary_cross_entropy(self.decode(self.encode(batch)), batch, reduction="sum").item()
            for batch in test.split(1000)
        ) / len(test)
        return {"test_reconstruction_bce": reconstruction, **encoder_retrieval(self.graphs()["encoder"].module, data)}


def _codes(model: ConvAutoencoder, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder graph: the code, and its hash bits as 0/1."""
    code = model.encode(image)
    return code, (model.hash(code) > 0).to(torch.uint8)
