"""Convolutional VAE: the VAE (training/vae.py: same loss, sampling and encoder graph) with convolutional
networks, and a decoder graph that makes it a generator. Its codes (posterior means) can be mixed and
decoded again: latent arithmetic through Encode and Generate. Its standard-normal prior means its
samples come from the same latents the gateway draws for every generator.
"""
import torch
from torch import nn

from latentserve.contract import GENERATE, IMAGE_SPEC, latent_spec
from latentserve.datasets import Mnist
from training.base import ExportGraph, Graph, LossModel, TrainConfig
from training.evaluation import evaluate_generator_graph
from training.vae import VAE


class ConvVAEConfig(TrainConfig):
    epochs: int = 20
    latent_dim: int = 16
    channels: int = 32


class ConvVAE(VAE):
    Config = ConvVAEConfig

    def __init__(self, config: ConvVAEConfig):
        LossModel.__init__(self)  # the networks differ from the MLP VAE's; the rest is inherited
        self.config = config
        c, d = config.channels, config.latent_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c, 4, 2, 1), nn.ReLU(),  # 14x14
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.ReLU(),  # 7x7
            nn.Flatten(), nn.Linear(2 * c * 49, 2 * d),  # mean, log variance
        )
        self.decoder = nn.Sequential(
            nn.Linear(d, 2 * c * 49), nn.ReLU(), nn.Unflatten(1, (2 * c, 7, 7)),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(c, 1, 4, 2, 1),  # logits
        )

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_variance = self.encoder(images).chunk(2, dim=1)
        return mean, log_variance

    def graphs(self) -> dict[str, Graph]:
        return {
            **super().graphs(),
            "decoder": Graph(
                module=ExportGraph(self, lambda model, latent: (model.decode(latent),)),
                inputs=(latent_spec(self.config.latent_dim),),
                outputs=(IMAGE_SPEC,),
                capability=GENERATE,
            ),
        }

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float]:
        return {**self.test_negative_elbo(data), **evaluate_generator_graph(self.graphs()["decoder"], data)}
