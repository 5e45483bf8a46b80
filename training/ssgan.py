"""Semi-supervised GAN (Salimans et al. 2016, "Improved techniques for training GANs", section 5): the
discriminator is a K-class classifier whose logits l_1..l_K also say real or fake. With the fake class's
logit fixed at 0, D(x) = p(real | x) = Z(x) / (Z(x) + 1), Z(x) = sum_k exp(l_k(x)), so

    discriminator loss = cross-entropy on labelled images
                         + 1/2 (-E_unlabelled log D(x) - E_generated log(1 - D(G(z))))
    generator loss     = || mean f(unlabelled) - mean f(G(z)) ||^2   (feature matching, section 3.1)

where f is the discriminator's last hidden layer. The generator's samples are the low-density points
that push the classes' boundaries into the gaps between them.

Networks as the paper's MNIST model (its code: github.com/openai/improved-gan): D is an MLP 784-1000-500-250-250-250-10 with weight normalisation
(Salimans & Kingma 2016) and Gaussian noise on its input (std 0.3) and after every hidden layer (0.5),
in training only; G is an MLP 100-500-500-784 with softplus, batch norm and a sigmoid output, fed
uniform noise. `initialise` sets D's scales and biases from a batch of data (weight normalisation's
data-dependent initialisation), so every layer starts with zero-mean, unit-variance outputs. The served
classifier is a moving average of D's weights, without noise; G only trains it.
"""
import copy

import torch
from torch import nn
from torch.nn import functional as F

from latentserve.datasets import CLASSES, Mnist
from training.base import Graph, optimizer_step, update_average
from training.evaluation import error_rate, evaluate_classifier
from training.semi_supervised import SemiSupervisedConfig, classifier_graph

PREVIEW_SAMPLES = 64
INITIALISATION_IMAGES = 500


class SSGANConfig(SemiSupervisedConfig):
    epochs: int = 100
    batch_size: int = 100  # unlabelled images a step; as many generated ones
    labelled_batch_size: int = 100
    learning_rate: float = 3e-3
    beta1: float = 0.5
    latent_dim: int = 100
    discriminator_layers: tuple[int, ...] = (1000, 500, 250, 250, 250)
    generator_layers: tuple[int, ...] = (500, 500)
    input_noise: float = 0.3
    hidden_noise: float = 0.5
    # validation, evaluation and export use a moving average of D's weights (the paper's code: 0.9999)
    ema_decay: float = 0.9999


class WeightNormLinear(nn.Module):
    """y = scale * (v / ||v||) x + bias, one norm per output unit (weight normalisation). As the paper's
    code: the hidden layers' scales are fixed once `initialise` sets them; only the output layers learn theirs."""

    def __init__(self, inputs: int, outputs: int, trainable_scale: bool = False, direction_std: float = 0.1):
        super().__init__()
        self.direction = nn.Parameter(torch.randn(outputs, inputs) * direction_std)
        self.bias = nn.Parameter(torch.zeros(outputs))
        if trainable_scale:
            self.scale = nn.Parameter(torch.ones(outputs))
        else:
            self.register_buffer("scale", torch.ones(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.direction * (self.scale / self.direction.norm(dim=1)).unsqueeze(1)
        return F.linear(x, weight, self.bias)

    @torch.no_grad()
    def initialise(self, x: torch.Tensor) -> None:
        """Scale and bias that give `x`'s outputs zero mean and unit variance per unit."""
        self.scale.fill_(1.0)
        self.bias.zero_()
        out = self(x)
        self.scale.div_(out.std(0) + 1e-6)
        self.bias.copy_(-out.mean(0) * self.scale)


class Discriminator(nn.Module):
    def __init__(self, config: SSGANConfig):
        super().__init__()
        sizes = (28 * 28, *config.discriminator_layers)
        self.hidden = nn.ModuleList(WeightNormLinear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.out = WeightNormLinear(sizes[-1], CLASSES, trainable_scale=True)
        self.input_noise, self.hidden_noise = config.input_noise, config.hidden_noise

    def _noise(self, x: torch.Tensor, std: float) -> torch.Tensor:
        return x + std * torch.randn_like(x) if self.training and std else x

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits, last hidden layer's features)."""
        x = self._noise(images.flatten(1), self.input_noise)
        for layer in self.hidden:
            features = F.relu(layer(x))
            x = self._noise(features, self.hidden_noise)
        return self.out(x), features

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self(images)[0]

    @torch.no_grad()
    def initialise(self, images: torch.Tensor) -> None:
        """Data-dependent initialisation, layer by layer, on inputs with the training noise (as the paper's
        code): each layer's statistics count the noise, so the noise keeps its weight against the signal."""
        x = images.flatten(1) + self.input_noise * torch.randn_like(images.flatten(1))
        for layer in self.hidden:
            layer.initialise(x)
            x = F.relu(layer(x))
            x = x + self.hidden_noise * torch.randn_like(x)
        self.out.initialise(x)


class Generator(nn.Module):
    def __init__(self, config: SSGANConfig):
        super().__init__()
        sizes = (config.latent_dim, *config.generator_layers)
        layers = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b, bias=False), nn.BatchNorm1d(b), nn.Softplus()]
        self.net = nn.Sequential(*layers, WeightNormLinear(sizes[-1], 28 * 28, trainable_scale=True, direction_std=0.05), nn.Sigmoid(), nn.Unflatten(1, (1, 28, 28)))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent)


class SSGAN(nn.Module):
    Config = SSGANConfig

    def __init__(self, config: SSGANConfig):
        super().__init__()
        self.config = config
        self.discriminator = Discriminator(config)
        self.generator = Generator(config)
        self.discriminator_average = copy.deepcopy(self.discriminator).requires_grad_(False)

    def initialise(self, train_images: torch.Tensor, train_labels: torch.Tensor) -> None:
        chosen = torch.randperm(len(train_images))[:INITIALISATION_IMAGES]
        self.discriminator.initialise(train_images[chosen])
        self.discriminator_average.load_state_dict(self.discriminator.state_dict())

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """The served classifier: D's weight average, without noise outside training."""
        return self.discriminator_average.classify(images)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), cfg.learning_rate, betas=(cfg.beta1, 0.999)),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), cfg.learning_rate, betas=(cfg.beta1, 0.999)),
        }

    def sample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.generator(torch.rand(count, self.config.latent_dim, generator=generator))

    def discriminator_losses(self, unlabelled: torch.Tensor, labelled: torch.Tensor, labels: torch.Tensor, fake: torch.Tensor):
        """(supervised cross-entropy, the real-or-fake term) of the discriminator."""
        logits = self.discriminator.classify(torch.cat([labelled, unlabelled, fake]))  # one pass: the noise is per image
        labelled_logits, real_logits, fake_logits = logits.split([len(labelled), len(unlabelled), len(fake)])
        supervised = F.cross_entropy(labelled_logits, labels)
        real_logits, fake_logits = real_logits.logsumexp(1), fake_logits.logsumexp(1)
        # -log D(x) = softplus(lse) - lse; -log(1 - D(G(z))) = softplus(lse)
        real_fake = 0.5 * ((F.softplus(real_logits) - real_logits).mean() + F.softplus(fake_logits).mean())
        return supervised, real_fake

    def feature_matching(self, unlabelled: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """The generator's loss; its gradient reaches G alone (D's weights need none here)."""
        with torch.no_grad():
            real_features = self.discriminator(unlabelled)[1].mean(0)
        self.discriminator.requires_grad_(False)
        try:
            return (real_features - self.discriminator(fake)[1].mean(0)).square().mean()
        finally:
            self.discriminator.requires_grad_(True)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, optimizers: dict) -> dict[str, float]:
        cfg = self.config
        # the loop's batches end with labelled_batch_size labelled images (training/semi_supervised.py)
        unlabelled = images[: -cfg.labelled_batch_size]
        labelled, targets = images[-cfg.labelled_batch_size :], labels[-cfg.labelled_batch_size :]
        fake = self.sample(len(unlabelled))
        supervised, real_fake = self.discriminator_losses(unlabelled, labelled, targets, fake.detach())
        optimizer_step(optimizers["discriminator"], supervised + real_fake)
        update_average(self.discriminator_average, self.discriminator, cfg.ema_decay)
        matching = self.feature_matching(unlabelled, self.sample(len(unlabelled)))
        optimizer_step(optimizers["generator"], matching)
        return {"supervised": supervised.item(), "real_fake": real_fake.item(), "feature_matching": matching.item()}

    @torch.no_grad()
    def validate(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return {"error": error_rate(self.classify, images, labels), "live_error": error_rate(self.discriminator.classify, images, labels)}

    @torch.no_grad()
    def preview(self, images: torch.Tensor) -> torch.Tensor:
        """Samples from fixed latents: what the discriminator learns to tell from digits."""
        return self.sample(PREVIEW_SAMPLES, torch.Generator().manual_seed(0))

    def graphs(self) -> dict[str, Graph]:
        return {"classifier": classifier_graph(self.discriminator_average)}  # G only trains it

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float]:
        return evaluate_classifier(self, data)
