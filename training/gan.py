"""GANs for 28x28 digits: DCGAN, WGAN, WGAN-GP and a class-conditional AC-GAN, on one pair of building blocks.

- DCGAN (Radford et al. 2016): fractionally-strided convolutions in G, strided ones in D, no pooling,
  batch norm in both, ReLU in G and LeakyReLU in D, N(0, 0.02) init, Adam(2e-4, beta1 0.5).
- WGAN-GP (Gulrajani et al. 2017): the same generator; a critic without batch norm, trained `critic_steps`
  times per generator step with the gradient penalty (lambda 10; lazily, on one critic step in
  `penalty_interval`), Adam(betas 0.5, 0.9).
- WGAN (Arjovsky et al. 2017, Algorithm 1): the WGAN-GP critic, kept 1-Lipschitz by clipping its weights
  to [-clip, clip] after every step instead of the penalty, `critic_steps` (5) critic steps per generator
  step, RMSProp (learning rate 5e-5; momentum-based optimisers made the paper's runs unstable).
- AC-GAN (Odena et al. 2017): the label goes into G (one-hot beside the latent) and into D's loss (D
  predicts it besides real/fake). Truncation (BigGAN) is applied to the latents at sampling time, in the
  gateway (serving/generation.py), not here.
DCGAN and WGAN-GP carry an InfoGAN categorical code read from the latent (`categories`, open to all
three); all three serve a moving average of G's weights (`ema_decay`).

The generators output images in [0, 1] like the data; discriminators map their input to [-1, 1].
"""
import copy
from typing import Literal

import torch
from pydantic import model_validator
from torch import nn
from torch.nn import functional as F

from latentserve.contract import GENERATE, IMAGE_SPEC, LABEL_SPEC, latent_spec
from latentserve.datasets import CLASSES, Mnist
from training.base import ExportGraph, Graph, TrainConfig, optimizer_step, update_average
from training.evaluation import evaluate_generator_graph

PREVIEW_SAMPLES = 64
# Latent batches (of 64) the weight average's batch-norm statistics are recomputed from. Copying G's
# statistics, which fit G's weights rather than the average's, cost WGAN-GP v2 FID 40.6 -> 59.4; 10, 100
# and 400 batches gave 41.3, 40.6 and 40.2 (docs/benchmarks.md).
AVERAGE_STATISTICS_BATCHES = 100


class GANConfig(TrainConfig):
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 2e-4
    discriminator_learning_rate: float | None = None  # None: learning_rate (separate rates: TTUR, Heusel et al. 2017)
    beta1: float = 0.5
    beta2: float = 0.999
    latent_dim: int = 64
    channels: int = 64
    # > 0: G's last upsampling ends in this many channels at 28x28 (batch norm, ReLU), then a 3x3 conv to
    # the image; 0: the last upsampling outputs the image itself
    refine_channels: int = 0
    ema_decay: float = 0.999  # > 0: serve a moving average of G's weights (Yazici et al. 2019); 0: G itself
    # > 0: an InfoGAN categorical code (Chen et al. 2016), learned without labels: the code is the argmax
    # of the latent's first `categories` elements (uniform for any i.i.d. latent, truncated or not), G
    # sees it one-hot, and D's last `categories` outputs must recover it from the image. It gives G's
    # continuous latent a discrete part, so fewer samples fall between digits.
    categories: int = 0
    information_weight: float = 1.0
    # The architecture tricks that helped in issue 30's ablation (docs/benchmarks.md), off by default (on in DCGAN v6):
    # G's normalisation: batch norm, or pixel-wise feature normalisation (Karras et al. 2018)
    generator_norm: Literal["batch", "pixel"] = "batch"
    minibatch_discrimination: int = 0  # > 0: D's kernels of minibatch discrimination (Salimans et al. 2016)
    minibatch_stddev: bool = False  # D sees the batch's mean standard deviation as one more feature map (Karras et al.)

    @model_validator(mode="after")
    def _code_fits_in_the_latent(self) -> "GANConfig":
        if self.categories > self.latent_dim:
            raise ValueError(f"categories ({self.categories}) must not exceed latent_dim ({self.latent_dim})")
        return self


class DCGANConfig(GANConfig):
    # v6: v5's recipe with the three tricks that helped in issue 30's ablation, for 24 epochs instead of 36:
    # FID 9.8 / 4.7 / 5.2 and score 8.91 / 9.41 / 9.53 at epochs 8 / 16 / 24, where v5 had 10.9 / 9.12 at
    # 36 (docs/benchmarks.md). About 177 s an epoch alone on 2 threads, so about 71 min (docs/training.md).
    epochs: int = 24
    generator_norm: Literal["batch", "pixel"] = "pixel"
    minibatch_discrimination: int = 100
    minibatch_stddev: bool = True
    refine_channels: int = 32
    # Twice as many codes as digits, weighted 2 (v4): every digit got a code of its own; with 10 codes
    # weighted 1 (v3) two codes drew 6s and none drew 5s (docs/benchmarks.md).
    categories: int = 20
    information_weight: float = 2.0


class WGANGPConfig(GANConfig):
    # v2: 2 critic steps per generator step (the paper's 5 left G 157 steps an epoch, 3,140 in v1's 20
    # epochs), learning rate 2e-4, DCGAN's 28x28 stage and InfoGAN code, G averaged: 7,038 G steps in
    # 18 epochs, FID 115.6 -> 59.4 (docs/benchmarks.md). v3: 30 epochs (11,730 G steps), FID 29.5.
    # v4: the penalty on every other critic step and G's step on the last critic step's samples (295 ->
    # 221 ms a step on 2 threads, a micro-benchmark): 64 epochs (25,024 G steps) took 103 min on 2 threads
    # with tests beside it early on; 86.5 s an epoch undisturbed, so about 92 min (docs/training.md).
    # v5: TTUR (Heusel et al. 2017), a faster critic at the same cost a step: FID 13.3 / score 8.91 at
    # epoch 64 against v4's 14.8 / 8.86, 100 min (docs/benchmarks.md).
    epochs: int = 64
    batch_size: int = 128  # critic_steps minibatches of 64: one generator step per batch
    learning_rate: float = 1e-4
    discriminator_learning_rate: float | None = 4e-4
    beta2: float = 0.9
    refine_channels: int = 32
    categories: int = 10
    critic_steps: int = 2
    gradient_penalty: float = 10.0
    # The penalty is taken on one critic step in `penalty_interval`, weighted by it (StyleGAN2's lazy
    # regularisation): its double backward costs as much as the rest of a critic step. It must divide
    # critic_steps, so every generator step sees the same pattern.
    penalty_interval: int = 2

    @model_validator(mode="after")
    def _penalty_interval_divides_critic_steps(self) -> "WGANGPConfig":
        if self.critic_steps % self.penalty_interval:
            raise ValueError(f"penalty_interval ({self.penalty_interval}) must divide critic_steps ({self.critic_steps})")
        return self


class WGANConfig(GANConfig):
    # Arjovsky et al.'s Algorithm 1: alpha 5e-5, c 0.01, m 64, n_critic 5; the network as WGAN-GP's.
    # v1: 16 epochs (2,512 G steps), 30 min on 1 thread beside another run (docs/benchmarks.md)
    epochs: int = 16
    batch_size: int = 320  # critic_steps minibatches of 64: one generator step per batch
    learning_rate: float = 5e-5
    refine_channels: int = 32
    categories: int = 10
    critic_steps: int = 5
    clip: float = 0.01


class PixelNorm(nn.Module):
    """Each pixel's feature vector scaled to unit mean square (Karras et al. 2018); `channels` groups a flat
    input (N, channels * pixels) into its pixels."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grouped = x.unflatten(1, (self.channels, -1))
        # clamp rather than + 1e-8: the ONNX optimiser drops an Add of a constant that close to 0
        return (grouped / torch.sqrt((grouped**2).mean(1, keepdim=True).clamp_min(1e-8))).reshape(x.shape)


def _generator_norm(kind: str, channels: int, flat_pixels: int = 0) -> nn.Module:
    """G's normalisation of `channels` feature maps, or of a flat input of `flat_pixels` pixels per channel."""
    features = channels * flat_pixels if flat_pixels else channels
    if kind == "pixel":
        return PixelNorm(channels)
    return nn.BatchNorm1d(features) if flat_pixels else nn.BatchNorm2d(features)


class Generator(nn.Module):
    def __init__(self, latent_dim: int, channels: int, classes: int = 0, refine_channels: int = 0, categories: int = 0,
                 norm: str = "batch"):
        super().__init__()
        self.classes, self.categories = classes, categories
        c = channels
        if refine_channels:
            output = [
                nn.ConvTranspose2d(c, refine_channels, 4, 2, 1, bias=False), _generator_norm(norm, refine_channels), nn.ReLU(),
                nn.Conv2d(refine_channels, 1, 3, 1, 1),
            ]
        else:
            output = [nn.ConvTranspose2d(c, 1, 4, 2, 1)]
        self.net = nn.Sequential(
            nn.Linear(latent_dim + classes + categories, 2 * c * 49, bias=False), _generator_norm(norm, 2 * c, flat_pixels=49), nn.ReLU(),
            nn.Unflatten(1, (2 * c, 7, 7)),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1, bias=False), _generator_norm(norm, c), nn.ReLU(),  # 14x14
            *output, nn.Tanh(),  # 28x28
        )

    def forward(self, latent: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.classes:
            latent = torch.cat([latent, F.one_hot(labels, self.classes).to(latent.dtype)], 1)
        if self.categories:
            latent = torch.cat([latent, F.one_hot(latent_code(latent, self.categories), self.categories).to(latent.dtype)], 1)
        return (self.net(latent) + 1) / 2


def latent_code(latent: torch.Tensor, categories: int) -> torch.Tensor:
    """The categorical code a latent carries (GANConfig.categories)."""
    return latent[:, :categories].argmax(1)


class MinibatchDiscrimination(nn.Module):
    """Salimans et al. 2016: `kernels` features per example, each the sum over the other examples of
    exp(-L1 distance) between their projections, so D can see a batch that lacks variety."""

    KERNEL_DIM = 5

    def __init__(self, features: int, kernels: int):
        super().__init__()
        self.kernels = kernels
        self.projection = nn.Parameter(torch.randn(features, kernels * self.KERNEL_DIM) * 0.05)
        self.bias = nn.Parameter(torch.zeros(kernels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = (x @ self.projection).view(len(x), self.kernels, self.KERNEL_DIM)
        distances = (m[:, None] - m[None]).abs().sum(3)  # (N, N, kernels)
        closeness = torch.exp(-distances).sum(1) - 1  # the example itself (exp 0) left out
        return torch.cat([x, closeness + self.bias], 1)


class MinibatchStddev(nn.Module):
    """Karras et al. 2018: the standard deviation over the batch of every feature at every pixel, averaged
    to one number, appended as a constant feature map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spread = torch.sqrt(x.var(0, unbiased=False) + 1e-8).mean()
        return torch.cat([x, spread.expand(len(x), 1, *x.shape[2:])], 1)


class Discriminator(nn.Module):
    """Strided convolutions with LeakyReLU. As a WGAN critic (`critic`): no batch norm, because the
    gradient penalty is per sample and batch norm couples the samples; no output bias, because the
    Wasserstein loss is blind to it. `features` gives what feature matching compares: the last layer's input
    before the minibatch features."""

    def __init__(self, channels: int, critic: bool = False, outputs: int = 1, minibatch_discrimination: int = 0,
                 minibatch_stddev: bool = False):
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 4, 2, 1), nn.LeakyReLU(0.2),  # 14x14
            nn.Conv2d(c, 2 * c, 4, 2, 1), nn.Identity() if critic else nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2),
            *([MinibatchStddev()] if minibatch_stddev else []),
            nn.Flatten(),
        )
        features = (2 * c + minibatch_stddev) * 49
        self.minibatch = MinibatchDiscrimination(features, minibatch_discrimination) if minibatch_discrimination else nn.Identity()
        self.head = nn.Linear(features + minibatch_discrimination, outputs, bias=not critic)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.minibatch(self.body(images * 2 - 1)))


def _dcgan_init(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class GAN(nn.Module):
    """What the three GANs share: optimizers, sampling, preview grid, export signature, evaluation."""

    Config = GANConfig
    classes = 0  # > 0: class-conditional
    discriminator_outputs = 1
    critic = False  # a WGAN critic rather than a classifier of real and fake

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        self.generator = Generator(config.latent_dim, config.channels, self.classes, config.refine_channels, config.categories,
                                   config.generator_norm)
        self.discriminator = Discriminator(config.channels, self.critic, self.discriminator_outputs + config.categories,
                                           config.minibatch_discrimination, config.minibatch_stddev)
        self.apply(_dcgan_init)
        if config.ema_decay:
            self.generator_average = copy.deepcopy(self.generator).requires_grad_(False)
            self.average_statistics_current = False

    def served_generator(self) -> Generator:
        """What previews, validation, evaluation and export use: the weight average, with batch-norm
        statistics of its own, if the config keeps one; G otherwise."""
        if not self.config.ema_decay:
            return self.generator
        if not self.average_statistics_current:
            self._recompute_average_statistics()
        return self.generator_average

    def generator_step(self, optimizers: dict, loss: torch.Tensor) -> None:
        optimizer_step(optimizers["generator"], loss)
        if self.config.ema_decay:
            update_average(self.generator_average, self.generator, self.config.ema_decay)
            self.average_statistics_current = False

    @torch.no_grad()
    def _recompute_average_statistics(self) -> None:
        """Batch-norm statistics for the average's weights: the mean over fixed-seed latent batches (as
        SWA's update_bn and BigGAN's standing statistics do). They depend only on the weights, so every
        use of one average serves the same graph."""
        average = self.generator_average
        norms = [m for m in average.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative mean rather than a moving one
        training = average.training
        average.train()
        generator = torch.Generator().manual_seed(0)
        for _ in range(AVERAGE_STATISTICS_BATCHES):
            average(*self.sample_inputs(64, generator))
        average.train(training)
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        self.average_statistics_current = True

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        discriminator_rate = cfg.learning_rate if cfg.discriminator_learning_rate is None else cfg.discriminator_learning_rate
        return {
            "generator": torch.optim.Adam(self.generator.parameters(), cfg.learning_rate, betas=(cfg.beta1, cfg.beta2)),
            "discriminator": torch.optim.Adam(self.discriminator.parameters(), discriminator_rate, betas=(cfg.beta1, cfg.beta2)),
        }

    def sample_inputs(self, count: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        latent = torch.randn(count, self.config.latent_dim, generator=generator)
        labels = torch.randint(0, self.classes, (count,), generator=generator) if self.classes else None
        return latent, labels

    def information_loss(self, discriminator_out: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        """InfoGAN's bound on the code's mutual information with the image, up to a constant; 0 without a code."""
        if not self.config.categories:
            return torch.zeros(())
        code = latent_code(latent, self.config.categories)
        return self.config.information_weight * F.cross_entropy(discriminator_out[:, -self.config.categories :], code)

    @torch.no_grad()
    def validate(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Discriminator scores on held-out real images against as many fixed-seed samples."""
        latent, fake_labels = self.sample_inputs(len(images), torch.Generator().manual_seed(0))
        real = torch.cat([self.discriminator(x)[:, 0] for x in images.split(1000)])
        fake = torch.cat([
            self.discriminator(self.served_generator()(z, y))[:, 0]
            for z, y in zip(latent.split(1000), fake_labels.split(1000) if self.classes else [None] * len(images))
        ])
        return {"real_score": real.mean().item(), "fake_score": fake.mean().item()}

    @torch.no_grad()
    def preview(self, images: torch.Tensor) -> torch.Tensor:
        """The same fixed latents every epoch (labels cycle through the classes)."""
        latent = torch.randn(PREVIEW_SAMPLES, self.config.latent_dim, generator=torch.Generator().manual_seed(0))
        labels = torch.arange(PREVIEW_SAMPLES) % self.classes if self.classes else None
        return self.served_generator()(latent, labels)

    def graphs(self) -> dict[str, Graph]:
        inputs = (latent_spec(self.config.latent_dim),)
        if self.classes:
            inputs += (LABEL_SPEC,)
        return {
            "generator": Graph(
                module=ExportGraph(self.served_generator(), _generate),
                inputs=inputs,
                outputs=(IMAGE_SPEC,),
                capability=GENERATE,
                classes=self.classes,
            )
        }

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float]:
        return evaluate_generator_graph(self.graphs()["generator"], data)


class DCGAN(GAN):
    Config = DCGANConfig

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, optimizers: dict) -> dict[str, float]:
        latent, _ = self.sample_inputs(len(images))
        fake = self.generator(latent)
        real_out, fake_out = self.discriminator(images), self.discriminator(fake.detach())
        d_loss = _bce(real_out[:, 0], 1) + _bce(fake_out[:, 0], 0) + self.information_loss(fake_out, latent)
        optimizer_step(optimizers["discriminator"], d_loss)
        out = self.discriminator(fake)
        g_loss = _bce(out[:, 0], 1) + self.information_loss(out, latent)  # non-saturating
        self.generator_step(optimizers, g_loss)
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}


class WGANGP(GAN):
    Config = WGANGPConfig
    critic = True

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, optimizers: dict) -> dict[str, float]:
        cfg = self.config
        for step, real in enumerate(images.chunk(cfg.critic_steps)):
            latent, _ = self.sample_inputs(len(real))
            fake = self.generator(latent)
            fake_out = self.discriminator(fake.detach())
            wasserstein = self.discriminator(real)[:, 0].mean() - fake_out[:, 0].mean()
            critic_loss = -wasserstein + self.information_loss(fake_out, latent)
            if step % cfg.penalty_interval == 0:
                penalty = self._gradient_penalty(real, fake.detach())
                critic_loss = critic_loss + cfg.penalty_interval * cfg.gradient_penalty * penalty
            optimizer_step(optimizers["discriminator"], critic_loss)
        # G's step reuses the last critic step's samples, as DCGAN's does: one G forward fewer per step
        out = self.discriminator(fake)
        g_loss = -out[:, 0].mean() + self.information_loss(out, latent)
        self.generator_step(optimizers, g_loss)
        return {"wasserstein": wasserstein.item(), "penalty": penalty.item(), "g_loss": g_loss.item()}

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """(||grad D(x)|| - 1)^2 at random points between real and fake samples."""
        mix = torch.rand(len(real), 1, 1, 1)
        between = (mix * real + (1 - mix) * fake).requires_grad_(True)
        (gradient,) = torch.autograd.grad(self.discriminator(between)[:, 0].sum(), between, create_graph=True)
        return ((gradient.flatten(1).norm(dim=1) - 1) ** 2).mean()


class WGAN(GAN):
    Config = WGANConfig
    critic = True

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        rate = self.config.learning_rate
        return {
            "generator": torch.optim.RMSprop(self.generator.parameters(), rate),
            "discriminator": torch.optim.RMSprop(self.discriminator.parameters(), rate),
        }

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, optimizers: dict) -> dict[str, float]:
        for real in images.chunk(self.config.critic_steps):
            latent, _ = self.sample_inputs(len(real))
            fake = self.generator(latent)
            fake_out = self.discriminator(fake.detach())
            wasserstein = self.discriminator(real)[:, 0].mean() - fake_out[:, 0].mean()
            optimizer_step(optimizers["discriminator"], -wasserstein + self.information_loss(fake_out, latent))
            with torch.no_grad():
                for weight in self.discriminator.parameters():
                    weight.clamp_(-self.config.clip, self.config.clip)
        out = self.discriminator(fake)  # G's step on the last critic step's samples, as WGAN-GP's
        g_loss = -out[:, 0].mean() + self.information_loss(out, latent)
        self.generator_step(optimizers, g_loss)
        return {"wasserstein": wasserstein.item(), "g_loss": g_loss.item()}


class ACGAN(GAN):
    classes = CLASSES
    discriminator_outputs = 1 + CLASSES  # real/fake logit, then class logits (then the code's, if any)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, optimizers: dict) -> dict[str, float]:
        latent, fake_labels = self.sample_inputs(len(images))
        fake = self.generator(latent, fake_labels)
        real_out, fake_out = self.discriminator(images), self.discriminator(fake.detach())
        d_loss = (
            _bce(real_out[:, 0], 1) + _bce(fake_out[:, 0], 0) + self.information_loss(fake_out, latent)
            + F.cross_entropy(_class_logits(real_out), labels) + F.cross_entropy(_class_logits(fake_out), fake_labels)
        )
        optimizer_step(optimizers["discriminator"], d_loss)
        out = self.discriminator(fake)
        g_loss = _bce(out[:, 0], 1) + F.cross_entropy(_class_logits(out), fake_labels) + self.information_loss(out, latent)
        self.generator_step(optimizers, g_loss)
        real_error = (_class_logits(real_out).argmax(1) != labels).float().mean()
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item(), "d_class_error": real_error.item()}


def _class_logits(discriminator_out: torch.Tensor) -> torch.Tensor:
    return discriminator_out[:, 1 : 1 + CLASSES]


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.flatten(), torch.full((logits.numel(),), float(target)))


def _generate(generator: Generator, latent: torch.Tensor, label: torch.Tensor | None = None) -> tuple[torch.Tensor]:
    """The generator graph: latent [N, D] (and label [N, 1] if conditional) -> image [N, 1, 28, 28] in [0, 1]."""
    return (generator(latent, None if label is None else label[:, 0]),)
