"""Convolutional VAE (Kingma & Welling 2014): the generator of the VAE family, and an encoder whose codes
(the posterior means) can be mixed and decoded again (latent arithmetic through Encode and Generate).

Bernoulli likelihood on grey levels in [0, 1], like the MLP VAE; a standard-normal prior, so its samples
come from the same latents the gateway draws for every generator.
"""
import torch
from torch import nn
from torch.nn import functional as F

from serving.mnist import Mnist
from training.gan import evaluate_generator_graph
from training.registry import Graph, LossModel, Losses, TensorSpec, TrainConfig


class ConvVAEConfig(TrainConfig):
    epochs: int = 20
    latent_dim: int = 16
    channels: int = 32


class ConvVAE(LossModel):
    Config = ConvVAEConfig

    def __init__(self, config: ConvVAEConfig):
        super().__init__()
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
        return self.encoder(images).chunk(2, dim=1)

    def reparameterize(self, mean: torch.Tensor, log_variance: torch.Tensor) -> torch.Tensor:
        return mean + torch.randn_like(mean) * torch.exp(0.5 * log_variance)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(latent))

    def loss(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> Losses:
        """Negative ELBO per image: Bernoulli reconstruction + KL(q(z|x) || N(0, I))."""
        mean, log_variance = self.encode(images)
        logits = self.decoder(self.reparameterize(mean, log_variance))
        reconstruction = F.binary_cross_entropy_with_logits(logits, images, reduction="sum") / len(images)
        kl = -0.5 * torch.sum(1 + log_variance - mean**2 - log_variance.exp()) / len(images)
        return Losses(reconstruction + kl, {"reconstruction": reconstruction.item(), "kl": kl.item()})

    @torch.no_grad()
    def preview(self, images: torch.Tensor) -> torch.Tensor:
        """Rows: inputs, reconstructions from the mean, samples from the prior (fixed seed)."""
        prior = torch.randn(len(images), self.config.latent_dim, generator=torch.Generator().manual_seed(0))
        return torch.cat([images, self.decode(self.encode(images)[0]), self.decode(prior)])

    def graphs(self) -> dict[str, Graph]:
        d = self.config.latent_dim
        return {
            "encoder": Graph(
                module=_EncoderGraph(self),
                inputs=(TensorSpec("image", "float32", (1, 28, 28)),),
                outputs=(TensorSpec("code", "float32", (d,)), TensorSpec("binary_code", "uint8", (d,))),
                capability="encode",
            ),
            "decoder": Graph(
                module=_DecoderGraph(self),
                inputs=(TensorSpec("latent", "float32", (d,)),),
                outputs=(TensorSpec("image", "float32", (1, 28, 28)),),
                capability="generate",
            ),
        }

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float]:
        test = torch.from_numpy(data.test.images[:, None])
        rng_state = torch.get_rng_state()
        torch.manual_seed(0)
        negative_elbo = sum(self.loss(batch).total.item() * len(batch) for batch in test.split(1000)) / len(test)
        torch.set_rng_state(rng_state)
        return {"test_negative_elbo": negative_elbo, **evaluate_generator_graph(self.graphs()["decoder"], data)}


class _EncoderGraph(nn.Module):
    def __init__(self, model: ConvVAE):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        mean, _ = self.model.encode(image)
        return mean, (mean > 0).to(torch.uint8)


class _DecoderGraph(nn.Module):
    def __init__(self, model: ConvVAE):
        super().__init__()
        self.model = model

    def forward(self, latent: torch.Tensor):
        return (self.model.decode(latent),)
