"""VAE (Kingma & Welling 2014) with an MLP encoder and decoder; the encoder mean serves as the code.

Its binary code is the sign of the mean: the prior is centred at zero, so each bit splits the data near
its median.
"""
import torch
from torch import nn
from torch.nn import functional as F

from latentserve.datasets import Mnist
from training.base import Graph, LossModel, Losses, TrainConfig, encoder_graph
from training.evaluation import encoder_retrieval


class VAEConfig(TrainConfig):
    latent_dim: int = 20
    hidden: int = 400
    hidden_layers: int = 1  # in the encoder and in the decoder


class VAE(LossModel):
    Config = VAEConfig

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.hidden = nn.Sequential(nn.Flatten(), *_layers(784, config.hidden, config.hidden_layers))
        self.mean = nn.Linear(config.hidden, config.latent_dim)
        self.log_variance = nn.Linear(config.hidden, config.latent_dim)
        self.decoder = nn.Sequential(
            *_layers(config.latent_dim, config.hidden, config.hidden_layers), nn.Linear(config.hidden, 784), nn.Unflatten(1, (1, 28, 28))
        )

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(images)
        return self.mean(h), self.log_variance(h)

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
        generator = torch.Generator().manual_seed(0)
        prior = torch.randn(len(images), self.config.latent_dim, generator=generator)
        return torch.cat([images, self.decode(self.encode(images)[0]), self.decode(prior)])

    def graphs(self) -> dict[str, Graph]:
        dim = self.config.latent_dim
        return {
            "encoder": encoder_graph(self, _codes, dim)
        }

    @torch.no_grad()
    def test_negative_elbo(self, data: Mnist) -> dict[str, float]:
        """Nats per test image (one posterior sample each, fixed seed): on the grey levels the model is
        trained on, and on the test images binarised by sampling each pixel (fixed seed), the data of the
        published MNIST VAE figures. The bound alone, whatever a subclass adds to its loss."""
        rng_state = torch.get_rng_state()
        torch.manual_seed(0)
        grey = torch.from_numpy(data.test.images[:, None])
        results = {}
        for name, images in (("test_negative_elbo", grey), ("test_negative_elbo_binarized", torch.bernoulli(grey))):
            results[name] = sum(VAE.loss(self, batch).total.item() * len(batch) for batch in images.split(1000)) / len(images)
        torch.set_rng_state(rng_state)
        return results

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float]:
        return {**self.test_negative_elbo(data), **encoder_retrieval(self.graphs()["encoder"].module, data)}


def _layers(inputs: int, hidden: int, count: int) -> list[nn.Module]:
    """`count` fully connected ReLU layers of `hidden` units."""
    layers = []
    for i in range(count):
        layers += [nn.Linear(inputs if i == 0 else hidden, hidden), nn.ReLU()]
    return layers


def _codes(model: VAE, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder graph: the posterior mean, and its signs as 0/1."""
    mean, _ = model.encode(image)
    return mean, (mean > 0).to(torch.uint8)
