"""Kingma, Rezende, Mohamed & Welling (2014), "Semi-supervised learning with deep generative models":
M1, M2 and M1+M2, with MLPs (softplus) as in the paper.

- M1: a VAE on all images; a classifier on its latent means, trained on the labelled ones only (its
  gradient does not reach the VAE: the paper's two stages, run side by side).
- M2: p(x|y,z) p(y) p(z) with q(z|x,y) and the classifier q(y|x). Besides its classifier it serves its
  decoder as a class-conditional generator and q(z|x,y) (y predicted) as an encoder of "style", so a
  digit's style is drawn with any class (the paper's analogies) through Encode and Generate. Labelled images cost -L(x,y), the
  negative bound; unlabelled ones cost U(x) = sum_y q(y|x) (-L(x,y)) - H(q(y|x)), with the sum over all
  ten classes (not a sample of y); the labelled ones also pay the classifier's cross-entropy, weighted by
  `alpha`. The paper's objective is sum_l -L + sum_u U + alpha' E_l[-log q(y|x)] with alpha' = 0.1 N:
  against the mean unlabelled cost, as in a batch here, that is a weight of 0.1 on the mean
  cross-entropy (its code weights each labelled image's log q(y|x) by 0.1 N / N_labelled, which most
  reimplementations read as 50 for 100 labels). M2 on pixels uses 50 (validation error 21-26% against
  28-37% at 0.1) and 10 labelled images a batch; M1+M2 keeps the 0.1 and 100 it shipped with.
- M1+M2: M2 over M1's latent space: a trained M1 (`m1_checkpoint`), frozen, turns each image into a
  sample of q(z1|x); M2 models z1 with a Gaussian p(z1|y,z2). The served classifier takes M1's mean.
  As in the paper's code, only M1's active units are kept (the sd of their mean over the training images
  above 0.1): an inactive unit's sample is prior noise, which drowned the few active ones (m1 v1 has 11
  of 50) in the classifier's input. The others are zeroed and left out of the likelihood.
"""
import copy
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from latentserve.contract import GENERATE, IMAGE_SPEC, LABEL_SPEC, PIXELS, latent_spec
from latentserve.datasets import CLASSES, Mnist
from training.base import ExportGraph, Graph, LossModel, Losses, encoder_graph
from training.evaluation import error_rate, evaluate_classifier, evaluate_generator_graph
from training.semi_supervised import SemiSupervisedConfig, classifier_graph
from training.vae import VAE, VAEConfig

ACTIVE_UNIT_SD = 0.1


def _mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Softplus(), nn.Linear(hidden, hidden), nn.Softplus(), nn.Linear(hidden, outputs))


class M1Config(SemiSupervisedConfig, VAEConfig):
    epochs: int = 50
    latent_dim: int = 50
    hidden: int = 600
    hidden_layers: int = 2
    classifier_weight_decay: float = 1e-3  # L2 on the classifier: it sees 100 points


class M1(VAE):
    Config = M1Config

    def __init__(self, config: M1Config):
        super().__init__(config)
        self.classifier = nn.Linear(config.latent_dim, CLASSES)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encode(images)[0])

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> Losses:
        elbo = super().loss(images)
        labelled = labels >= 0
        logits = self.classifier(self.encode(images[labelled])[0].detach())
        cross_entropy = F.cross_entropy(logits, labels[labelled])
        decay = self.config.classifier_weight_decay * self.classifier.weight.square().sum()
        return Losses(elbo.total + cross_entropy + decay, {**elbo.terms, "cross_entropy": cross_entropy.item()})

    @torch.no_grad()
    def validate(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        elbo = sum(VAE.loss(self, x).total.item() * len(x) for x in images.split(1000)) / len(images)
        return {"negative_elbo": elbo, "error": error_rate(self.classify, images, labels)}

    def graphs(self) -> dict[str, Graph]:
        return {"classifier": classifier_graph(_without(self, "decoder"))}

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float]:
        return {**self.test_negative_elbo(data), **evaluate_classifier(self, data)}


class M2Config(SemiSupervisedConfig):
    epochs: int = 12  # the validation error is lowest by epoch 5 and rises after (docs/benchmarks.md); best.pt keeps it
    labelled_batch_size: int = 10
    latent_dim: int = 50
    hidden: int = 500
    learning_rate: float = 3e-4
    alpha: float = 50.0


class M2Network(nn.Module):
    """M2 over flat inputs of `dim` values: Bernoulli p(x|y,z) for pixels, Gaussian for M1's latents."""

    def __init__(self, dim: int, hidden: int, latent_dim: int, gaussian: bool):
        super().__init__()
        self.gaussian = gaussian
        self.classifier = _mlp(dim, hidden, CLASSES)
        self.encoder = _mlp(dim + CLASSES, hidden, 2 * latent_dim)
        self.decoder = _mlp(latent_dim + CLASSES, hidden, 2 * dim if gaussian else dim)
        if gaussian:
            self.register_buffer("observed", torch.ones(dim))  # 0: a dimension the likelihood leaves out

    def negative_bound(self, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """-L(x, y) per row, nats: -log p(x|y,z) + KL(q(z|x,y) || N(0, I)) - log p(y), with one sample
        z = mean + sd * noise (noise: standard normal, drawn here unless given)."""
        one_hot = F.one_hot(y, CLASSES).to(x.dtype)
        mean, log_variance = self.encoder(torch.cat([x, one_hot], 1)).chunk(2, 1)
        noise = torch.randn_like(mean) if noise is None else noise
        z = mean + noise * torch.exp(0.5 * log_variance)
        out = self.decoder(torch.cat([z, one_hot], 1))
        if self.gaussian:
            x_mean, x_log_variance = out.chunk(2, 1)
            minus_twice_log_density = x_log_variance + (x - x_mean) ** 2 / x_log_variance.exp() + math.log(2 * math.pi)
            reconstruction = 0.5 * (minus_twice_log_density * self.observed).sum(1)
        else:
            reconstruction = F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(1)
        kl = -0.5 * (1 + log_variance - mean**2 - log_variance.exp()).sum(1)
        return reconstruction + kl + math.log(CLASSES)

    def unlabelled_cost(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """U(x) per row: every class at once (the batch repeated ten times). `noise`: [classes, n, latent]."""
        n = len(x)
        y = torch.arange(CLASSES).repeat_interleave(n)
        flat_noise = None if noise is None else noise.flatten(0, 1)
        bounds = self.negative_bound(x.repeat(CLASSES, 1), y, flat_noise).view(CLASSES, n).T  # [n, classes]
        return self._expected(x, bounds)

    def unlabelled_cost_by_class(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """U(x) with one pass per class: the same value, kept as the check of `unlabelled_cost`."""
        bounds = torch.stack([self.negative_bound(x, torch.full((len(x),), c), noise[c]) for c in range(CLASSES)], 1)
        return self._expected(x, bounds)

    def _expected(self, x: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
        log_q = F.log_softmax(self.classifier(x), 1)
        q = log_q.exp()
        return (q * bounds).sum(1) + (q * log_q).sum(1)  # E_q[-L] - H(q)

    def loss(self, x: torch.Tensor, labels: torch.Tensor, alpha: float) -> Losses:
        """Mean -L over the labelled images + mean U over the unlabelled ones + alpha x mean cross-entropy."""
        labelled = labels >= 0
        bound = self.negative_bound(x[labelled], labels[labelled]).mean()
        unlabelled = self.unlabelled_cost(x[~labelled]).mean() if (~labelled).any() else torch.zeros(())
        cross_entropy = F.cross_entropy(self.classifier(x[labelled]), labels[labelled])
        total = bound + unlabelled + alpha * cross_entropy
        return Losses(total, {"labelled_bound": bound.item(), "unlabelled_cost": unlabelled.item(), "cross_entropy": cross_entropy.item()})


class M2(LossModel):
    Config = M2Config
    unserved_parts = ("network.encoder", "network.decoder")

    def __init__(self, config: M2Config):
        super().__init__()
        self.config = config
        self.network = M2Network(PIXELS, config.hidden, config.latent_dim, gaussian=False)

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.classifier(images.flatten(1))

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> Losses:
        return self.network.loss(images.flatten(1), labels, self.config.alpha)

    @torch.no_grad()
    def validate(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return {"error": error_rate(self.classify, images, labels)}

    @torch.no_grad()
    def preview(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def style(self, images: torch.Tensor) -> torch.Tensor:
        """The mean of q(z|x,y) with y the classifier's prediction: the image's "handwriting style"."""
        x = images.flatten(1)
        predicted = F.one_hot(self.network.classifier(x).argmax(1), CLASSES).to(x.dtype)
        return self.network.encoder(torch.cat([x, predicted], 1)).chunk(2, 1)[0]

    def draw(self, latent: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|y,z): an image of class `labels` in style `latent`."""
        logits = self.network.decoder(torch.cat([latent, F.one_hot(labels, CLASSES).to(latent.dtype)], 1))
        return torch.sigmoid(logits).view(-1, 1, 28, 28)

    def graphs(self) -> dict[str, Graph]:
        """The classifier, and (Kingma et al. 2014's "analogies") M2 as a conditional generator: a style
        encoder, whose codes the generator draws with any class."""
        dim = self.config.latent_dim
        return {
            "classifier": classifier_graph(_without(self, *self.unserved_parts)),
            "generator": Graph(
                module=ExportGraph(_without(self, "network.classifier", "network.encoder"),
                                   lambda model, latent, label: (model.draw(latent, label[:, 0]),)),
                inputs=(latent_spec(dim), LABEL_SPEC),
                outputs=(IMAGE_SPEC,),
                capability=GENERATE,
                classes=CLASSES,
            ),
            "encoder": encoder_graph(_without(self, "network.decoder"), _style_codes, dim),
        }

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float]:
        return {**evaluate_classifier(self, data), **evaluate_generator_graph(self.graphs()["generator"], data)}


def _style_codes(model: "M2", image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    style = model.style(image)
    return style, (style > 0).to(torch.uint8)


class M1M2Config(M2Config):
    epochs: int = 60  # fits the 2-hour budget beside other trainings (~55 s an epoch on one thread)
    labelled_batch_size: int = 100
    alpha: float = 0.1
    m1_checkpoint: str = "runs/m1/checkpoint.pt"  # read once, when a fresh run starts
    m1_latent_dim: int = M1Config().latent_dim
    m1_hidden: int = M1Config().hidden
    m1_hidden_layers: int = M1Config().hidden_layers


class M1M2(M2):
    Config = M1M2Config
    unserved_parts = (*M2.unserved_parts, "m1.decoder")

    def __init__(self, config: M1M2Config):
        LossModel.__init__(self)
        self.config = config
        shape = {"latent_dim": config.m1_latent_dim, "hidden": config.m1_hidden, "hidden_layers": config.m1_hidden_layers}
        self.m1 = VAE(VAEConfig(**shape)).requires_grad_(False)
        self.network = M2Network(config.m1_latent_dim, config.hidden, config.latent_dim, gaussian=True)

    def initialise(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """At the start of a fresh run: M1's trained VAE, frozen, and which of its units are active (from
        the images alone)."""
        checkpoint = torch.load(Path(self.config.m1_checkpoint), map_location="cpu", weights_only=True)
        wanted = {key: getattr(self.m1.config, key) for key in ("latent_dim", "hidden", "hidden_layers")}
        found = {key: checkpoint["config"].get(key) for key in wanted} if checkpoint["model"] == "m1" else None
        if found != wanted:
            raise ValueError(f"{self.config.m1_checkpoint} is not an m1 of {wanted}")
        self.m1.load_state_dict({k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("classifier.")})
        with torch.no_grad():
            means = torch.cat([self.m1.encode(x)[0] for x in images.split(1000)])
        self.network.observed.copy_((means.std(0) > ACTIVE_UNIT_SD).float())

    def features(self, z1: torch.Tensor) -> torch.Tensor:
        """M1's active units; the others zeroed."""
        return z1 * self.network.observed

    def train(self, mode: bool = True) -> "M1M2":
        super().train(mode)
        self.m1.eval()
        return self

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        return self.network.classifier(self.features(self.m1.encode(images)[0]))

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> Losses:
        with torch.no_grad():
            z1 = self.features(self.m1.reparameterize(*self.m1.encode(images)))
        return self.network.loss(z1, labels, self.config.alpha)

    def graphs(self) -> dict[str, Graph]:
        return {"classifier": classifier_graph(_without(self, *self.unserved_parts))}  # its decoder draws M1 codes

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float]:
        return evaluate_classifier(self, data)


def _without(model: nn.Module, *parts: str) -> nn.Module:
    """A copy of `model` without the submodules `classify` does not use (M1's decoder, M2's encoder and
    decoder), so the served files hold only the classifier's weights."""
    served = copy.deepcopy(model)
    for part in parts:
        *path, name = part.split(".")
        delattr(served.get_submodule(".".join(path)), name)
    return served
