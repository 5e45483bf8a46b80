"""Restricted Boltzmann machines and deep belief networks: binary visible units, binary (or linear) hidden
units, trained by contrastive divergence; the partition function by annealed importance sampling.

- `RBMLayer` is the machine: energy E(v, h) = -b.v - c.h - v W h (+ |h|^2 / 2 with linear hidden units,
  whose states are their input plus unit-variance Gaussian noise: Hinton & Salakhutdinov 2006's code layer).
  Its free energy F(v) = -log sum_h exp(-E(v, h)) is closed-form, so the CD gradient is the gradient of
  mean F(data) - mean F(negatives) (hidden statistics are expectations, as Hinton's practical guide
  advises). Negatives: the last Gibbs step's visible probabilities after `cd_steps` steps of a chain of 0/1
  states that starts at the data (CD-k, Hinton 2002) or continues from the last batch (persistent CD,
  Tieleman 2008). Every sampling step is a function of uniforms, so a chain can be replayed.
- `ais_log_partition`: Salakhutdinov & Murray 2008's AIS from a base-rate RBM (visible biases fitted to the
  data's pixel means, no weights) to the RBM; `exact_log_partition` enumerates the smaller layer.
- `RBM` ("rbm"): one machine on dynamically binarised MNIST (every batch sampled afresh from the grey
  levels). Its card reports the AIS test log-likelihood on the test images binarised once (seed 0).
- `DBN` ("dbn"): RBMs stacked by greedy layer-wise training (Hinton, Osindero & Teh 2006): layer k trains
  during epochs [k, k + 1) * `epochs_per_layer` on the hidden probabilities of the layers below; the top
  layer goes on training if `epochs` runs past the schedule. The defaults are Hinton & Salakhutdinov's
  784-1000-500-250-30 with a linear top layer, the pretraining of training/deep_autoencoder.py.

Optimiser: SGD with momentum and weight decay on the weights (not the biases), as in Hinton's guide and
Hinton & Salakhutdinov's code: momentum 0.5 for a layer's first `initial_momentum_epochs` epochs, then 0.9.
Persistent CD wants a smaller rate than CD-k (its chains must keep up with the weights): 0.05 diverged
here, 0.01 learned slowly.

The served graph "gibbs" is one step of the RBM's Gibbs chain: the hidden states drawn by the caller's
uniforms, the next image's pixel probabilities; the caller draws the pixels (serving/generation.py).
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

from latentserve.contract import (
    GENERATE, HEIGHT, IMAGE_SPEC, NEXT_PROBABILITIES_SPEC, PIXELS, WIDTH, hidden_uniforms_spec,
)
from latentserve.datasets import Mnist
from training.base import ExportGraph, Graph, TrainConfig, encoder_graph
from training.evaluation import encoder_retrieval

MNIST_TRAIN_IMAGES = 50_000  # an epoch's length until initialise() sees the training set
AIS_BETAS = (500, 4000, 10_000)  # Salakhutdinov & Murray: betas spaced evenly over [0, .5], [.5, .9], [.9, 1]
PREVIEW_GIBBS_STEPS = 1000

class RBMLayer(nn.Module):
    """One RBM on flat visible vectors (N, visible)."""

    def __init__(self, visible: int, hidden: int, gaussian_hidden: bool = False):
        super().__init__()
        self.gaussian_hidden = gaussian_hidden
        self.weight = nn.Parameter(0.01 * torch.randn(visible, hidden))
        self.visible_bias = nn.Parameter(torch.zeros(visible))
        self.hidden_bias = nn.Parameter(torch.zeros(hidden))

    def hidden_input(self, v: torch.Tensor) -> torch.Tensor:
        return v @ self.weight + self.hidden_bias

    def hidden_mean(self, v: torch.Tensor) -> torch.Tensor:
        """E[h | v]: probabilities, or the linear units' input."""
        x = self.hidden_input(v)
        return x if self.gaussian_hidden else torch.sigmoid(x)

    def sample_hidden(self, v: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """h ~ p(h | v) from uniforms: 1 where the uniform is below p, or the mean plus Phi^-1(uniform)."""
        x = self.hidden_input(v)
        if self.gaussian_hidden:
            return x + torch.special.ndtri(uniforms.clamp(1e-7, 1 - 1e-7))
        return (uniforms < torch.sigmoid(x)).to(v.dtype)

    def visible_probabilities(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h @ self.weight.T + self.visible_bias)

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """F(v) per row, so p(v) = exp(-F(v)) / Z (linear hidden units: up to a constant)."""
        x = self.hidden_input(v)
        hidden_term = 0.5 * x.square() if self.gaussian_hidden else F.softplus(x)
        return -v @ self.visible_bias - hidden_term.sum(1)

    def gibbs_step(
        self, v: torch.Tensor, hidden_uniforms: torch.Tensor, visible_uniforms: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """v -> h -> v': the next visible sample (1 where its uniform is below its probability) and the
        probabilities p(v' | h)."""
        p = self.visible_probabilities(self.sample_hidden(v, hidden_uniforms))
        return (visible_uniforms < p).to(p.dtype), p

    @torch.no_grad()
    def sample(
        self, count: int, steps: int, generator: torch.Generator | None = None, start: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`steps` Gibbs steps from `start` (default: pixels on with probability 1/2): the last samples and
        their probabilities."""
        v = torch.bernoulli(torch.full((count, len(self.visible_bias)), 0.5), generator=generator) if start is None else start
        p = v
        for _ in range(steps):
            v, p = self.gibbs_step(v, *_uniforms(self, len(v), generator))
        return v, p


def _uniforms(rbm: RBMLayer, count: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    hidden, visible = len(rbm.hidden_bias), len(rbm.visible_bias)
    return torch.rand(count, hidden, generator=generator), torch.rand(count, visible, generator=generator)


def contrastive_divergence(
    rbm: RBMLayer, data: torch.Tensor, optimizer: torch.optim.Optimizer, steps: int, chains: torch.Tensor | None = None
) -> dict[str, float]:
    """One update of `rbm` on a batch of flat `data`: CD-`steps`, or persistent CD when `chains` (a buffer of
    fantasy states, advanced in place) is given. Returns the squared reconstruction error per row after
    one Gibbs step from the data, and the free-energy gap between data and negatives."""
    with torch.no_grad():
        v, p = rbm.gibbs_step(data, *_uniforms(rbm, len(data)))  # CD's first step; PCD's monitor only
        reconstruction = (data - p).square().sum(1).mean().item()
        remaining = steps - 1
        if chains is not None:
            v, remaining = chains, steps
        for _ in range(remaining):
            v, p = rbm.gibbs_step(v, *_uniforms(rbm, len(v)))
        if chains is not None:
            chains.copy_(v)
    gap = rbm.free_energy(data).mean() - rbm.free_energy(p).mean()
    optimizer.zero_grad()
    gap.backward()
    optimizer.step()
    return {"reconstruction": reconstruction, "free_energy_gap": gap.item()}


def rbm_optimizer(rbm: RBMLayer, learning_rate: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(
        [{"params": [rbm.weight], "weight_decay": weight_decay}, {"params": [rbm.visible_bias, rbm.hidden_bias]}],
        lr=learning_rate, momentum=momentum,
    )


def set_momentum(optimizer: torch.optim.Optimizer, momentum: float) -> None:
    for group in optimizer.param_groups:
        group["momentum"] = momentum


def base_rate_bias(images: torch.Tensor) -> torch.Tensor:
    """Visible biases of the base-rate model: the log-odds of each pixel's mean over `images` (grey levels
    are the probabilities of a pixel being on), smoothed as if one more image were on and one off."""
    flat = images.flatten(1).double()
    p = (flat.sum(0) + 1) / (len(flat) + 2)
    return torch.log(p / (1 - p)).float()


@torch.no_grad()
def reconstruction_error(rbm: RBMLayer, v: torch.Tensor) -> float:
    """Mean squared error per row of the mean-field reconstruction p(v | E[h | v])."""
    return sum((x - rbm.visible_probabilities(rbm.hidden_mean(x))).square().sum().item() for x in v.split(1000)) / len(v)


# ---- the partition function ----

def ais_schedule(counts: tuple[int, int, int] = AIS_BETAS) -> torch.Tensor:
    """Inverse temperatures from 0 to 1: counts[0] steps over [0, .5), counts[1] over [.5, .9), counts[2]
    over [.9, 1] (both ends included: 1 + sum(counts) values)."""
    parts = [torch.linspace(a, b, n + 1, dtype=torch.float64)[:-1] for (a, b), n in zip(((0, .5), (.5, .9), (.9, 1)), counts)]
    return torch.cat([*parts, torch.ones(1, dtype=torch.float64)])


@torch.no_grad()
def ais_log_partition(
    rbm: RBMLayer,
    runs: int = 100,
    betas: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    base_bias: torch.Tensor | None = None,
) -> tuple[float, float, float]:
    """log Z of a binary RBM by annealed importance sampling (Salakhutdinov & Murray 2008): `runs`
    independent runs through p_k(v) ∝ exp(((1 - beta_k) a + beta_k b).v) prod_j (1 + exp(beta_k (c + vW)_j)),
    from the base-rate model (visible biases a = `base_bias`, default 0; no weights) to the RBM. Returns
    (log Z estimate, low, high): log of the mean importance weight, and log(mean -+ 3 standard errors) (low
    is -inf when the interval reaches 0). Weights are summed in float64; the chains run in float32."""
    if rbm.gaussian_hidden:
        raise ValueError("AIS here needs binary hidden units")
    betas = ais_schedule() if betas is None else betas.double()
    a = torch.zeros_like(rbm.visible_bias) if base_bias is None else base_bias.to(rbm.visible_bias)
    b, c, weight = rbm.visible_bias, rbm.hidden_bias, rbm.weight
    v = (torch.rand(runs, len(b), generator=generator) < torch.sigmoid(a)).float()  # exact samples of p_0
    log_weights = torch.zeros(runs, dtype=torch.float64)
    for previous, beta in zip(betas[:-1].tolist(), betas[1:].tolist()):
        x = v @ weight + c
        # log p_k(v) - log p_{k-1}(v) at the state that T_{k-1} left
        log_weights += (beta - previous) * (v @ (b - a)).double()
        log_weights += (F.softplus(beta * x.double()) - F.softplus(previous * x.double())).sum(1)
        if beta < 1:  # T_k: a Gibbs step that leaves p_k invariant
            h = (torch.rand(x.shape, generator=generator) < torch.sigmoid(beta * x)).float()
            visible_input = (1 - beta) * a + beta * (h @ weight.T + b)
            v = (torch.rand(v.shape, generator=generator) < torch.sigmoid(visible_input)).float()
    log_z_base = F.softplus(a.double()).sum().item() + len(c) * math.log(2)
    shift = log_weights.max()
    w = torch.exp(log_weights - shift)
    mean, error = w.mean().item(), 3 * w.std().item() / math.sqrt(runs)
    low = math.log(mean - error) if mean > error else -math.inf
    return tuple(log_z_base + shift.item() + value for value in (math.log(mean), low, math.log(mean + error)))


@torch.no_grad()
def exact_log_partition(rbm: RBMLayer) -> float:
    """log Z by enumerating the states of the smaller layer (at most 2^20 of them)."""
    if rbm.gaussian_hidden:
        raise ValueError("exact enumeration needs binary hidden units")
    weight, b, c = rbm.weight.double(), rbm.visible_bias.double(), rbm.hidden_bias.double()
    if len(c) <= len(b):  # sum over h: exp(c.h) prod_i (1 + exp(b_i + (W h)_i))
        h = _all_states(len(c))
        log_terms = h @ c + F.softplus(h @ weight.T + b).sum(1)
    else:
        v = _all_states(len(b))
        log_terms = v @ b + F.softplus(v @ weight + c).sum(1)
    return torch.logsumexp(log_terms, 0).item()


def _all_states(units: int) -> torch.Tensor:
    if units > 20:
        raise ValueError(f"{units} units: too many states to enumerate")
    return ((torch.arange(2**units)[:, None] >> torch.arange(units)) & 1).double()


# ---- the epoch clock: greedy schedules need to know the epoch inside train_step ----

class EpochClock(nn.Module):
    """Steps taken, and steps per epoch (set by `initialise` from the training set's size; until then the
    bundled MNIST training split's)."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("steps_per_epoch", torch.tensor(math.ceil(MNIST_TRAIN_IMAGES / batch_size)))

    def set_training_images(self, count: int) -> None:
        self.steps_per_epoch.fill_(math.ceil(count / self.batch_size))

    def epoch(self) -> int:
        return int(self.steps) // int(self.steps_per_epoch)

    def tick(self) -> None:
        self.steps += 1


class SGDConfig(TrainConfig):
    """What every RBM layer trains with."""

    batch_size: int = 100
    learning_rate: float = 0.1
    momentum: float = 0.9
    initial_momentum: float = 0.5
    initial_momentum_epochs: int = 5  # of each layer's training
    weight_decay: float = 2e-4  # on the weights only
    cd_steps: int = 1


class RBMConfig(SGDConfig):
    epochs: int = 40
    learning_rate: float = 0.05
    cd_steps: int = 25  # Salakhutdinov & Murray's best RBM; persistent CD wants 1 and a rate of about 0.01
    hidden: int = 500
    persistent: bool = False  # persistent CD: `batch_size` chains carried from batch to batch
    ais_runs: int = 100
    ais_betas: tuple[int, int, int] = AIS_BETAS


class RBM(RBMLayer):
    Config = RBMConfig

    def __init__(self, config: RBMConfig):
        super().__init__(PIXELS, config.hidden)
        self.config = config
        self.clock = EpochClock(config.batch_size)
        if config.persistent:
            self.register_buffer("chains", torch.bernoulli(torch.full((config.batch_size, PIXELS), 0.5)))

    def initialise(self, train_images: torch.Tensor, train_labels: torch.Tensor) -> None:
        """Visible biases at the log-odds of the pixel means (Hinton's guide); the epoch's length."""
        self.clock.set_training_images(len(train_images))
        with torch.no_grad():
            self.visible_bias.copy_(base_rate_bias(train_images))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        return {"rbm": rbm_optimizer(self, cfg.learning_rate, cfg.initial_momentum, cfg.weight_decay)}

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, optimizers: dict) -> dict[str, float]:
        cfg = self.config
        set_momentum(optimizers["rbm"], cfg.initial_momentum if self.clock.epoch() < cfg.initial_momentum_epochs else cfg.momentum)
        chains = self.chains if cfg.persistent else None
        terms = contrastive_divergence(self, torch.bernoulli(images.flatten(1)), optimizers["rbm"], cfg.cd_steps, chains)
        self.clock.tick()
        return terms

    @torch.no_grad()
    def validate(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Squared error of the mean-field reconstruction of the images binarised once (seed 0)."""
        binary = torch.bernoulli(images.flatten(1), generator=torch.Generator().manual_seed(0))
        return {"loss": reconstruction_error(self, binary)}

    @torch.no_grad()
    def preview(self, images: torch.Tensor) -> torch.Tensor:
        """Rows: inputs, mean-field reconstructions, samples after PREVIEW_GIBBS_STEPS steps (fixed seed)."""
        flat = images.flatten(1)
        reconstructions = self.visible_probabilities(self.hidden_mean(flat))
        _, samples = self.sample(len(images), PREVIEW_GIBBS_STEPS, torch.Generator().manual_seed(0))
        return torch.cat([flat, reconstructions, samples]).view(-1, 1, HEIGHT, WIDTH)

    def graphs(self) -> dict[str, Graph]:
        return {
            "gibbs": Graph(
                module=ExportGraph(self, _gibbs),
                inputs=(IMAGE_SPEC, hidden_uniforms_spec(self.config.hidden)),
                outputs=(NEXT_PROBABILITIES_SPEC,),
                capability=GENERATE,
            )
        }

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float | None]:
        """AIS (seed 0, base rates of the training images) and the test log-likelihood in nats per image on
        the test images binarised once (seed 0): mean -F(v) - log Z, its interval from log Z's (None where
        the 3-sigma interval of Z reaches 0)."""
        cfg = self.config
        base = base_rate_bias(torch.from_numpy(data.train.images))
        log_z, low, high = ais_log_partition(
            self, cfg.ais_runs, ais_schedule(cfg.ais_betas), torch.Generator().manual_seed(0), base
        )
        test = torch.bernoulli(torch.from_numpy(data.test.images[:, None]), generator=torch.Generator().manual_seed(0))
        unnormalised = -sum(self.free_energy(x).double().sum().item() for x in test.flatten(1).split(1000)) / len(test)
        return {
            "test_log_likelihood": unnormalised - log_z,
            "test_log_likelihood_low": unnormalised - high,
            "test_log_likelihood_high": _bounded(unnormalised - low),
            "log_partition": log_z, "log_partition_low": _bounded(low), "log_partition_high": high,
        }


def _bounded(value: float) -> float | None:
    """None for an unbounded end of an interval (JSON has no infinity)."""
    return value if math.isfinite(value) else None


def _gibbs(model: RBM, image: torch.Tensor, hidden_uniforms: torch.Tensor) -> tuple[torch.Tensor]:
    """The gibbs graph: p(v' | h), h drawn from p(h | image) by the uniforms."""
    return (model.visible_probabilities(model.sample_hidden(image.flatten(1), hidden_uniforms)).view_as(image),)


# ---- deep belief networks ----

class DBNConfig(SGDConfig):
    epochs: int = 40  # len(hidden) * epochs_per_layer
    hidden: list[int] = [1000, 500, 250, 30]
    gaussian_top: bool = True  # the top layer's hidden units linear (Hinton & Salakhutdinov's code layer)
    top_learning_rate: float = 0.001  # theirs for the linear layer
    epochs_per_layer: int = 10
    binarize: bool = True  # sample the bottom layer's data from the grey levels each batch; False: grey levels


class DBN(nn.Module):
    Config = DBNConfig

    def __init__(self, config: DBNConfig):
        super().__init__()
        self.config = config
        sizes = [PIXELS, *config.hidden]
        self.layers = nn.ModuleList(
            RBMLayer(n_in, n_out, gaussian_hidden=config.gaussian_top and i == len(config.hidden) - 1)
            for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:]))
        )
        self.clock = EpochClock(config.batch_size)
        self._freeze_all_but(self.training_layer())

    def training_layer(self, step: int | None = None) -> int:
        """The layer that trains at `step` (default: the next one)."""
        epoch = (int(self.clock.steps) if step is None else step) // int(self.clock.steps_per_epoch)
        return min(epoch // self.config.epochs_per_layer, len(self.layers) - 1)

    def trained_layer(self) -> int:
        """The layer the last step trained (0 before any)."""
        return self.training_layer(max(int(self.clock.steps) - 1, 0))

    def pretraining_steps(self) -> int:
        return len(self.layers) * self.config.epochs_per_layer * int(self.clock.steps_per_epoch)

    def _freeze_all_but(self, index: int) -> None:
        for i, layer in enumerate(self.layers):
            layer.requires_grad_(i == index)

    def up(self, v: torch.Tensor, depth: int) -> torch.Tensor:
        """Hidden means of layer `depth - 1` for flat images (depth 0: the images)."""
        for layer in self.layers[:depth]:
            v = layer.hidden_mean(v)
        return v

    def down(self, h: torch.Tensor, depth: int) -> torch.Tensor:
        """Visible probabilities of the bottom layer from the hidden state of layer `depth - 1`."""
        for layer in reversed(self.layers[:depth]):
            h = layer.visible_probabilities(h)
        return h

    def initialise(self, train_images: torch.Tensor, train_labels: torch.Tensor) -> None:
        self.clock.set_training_images(len(train_images))
        with torch.no_grad():
            self.layers[0].visible_bias.copy_(base_rate_bias(train_images))

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        return {
            f"layer{i}": rbm_optimizer(
                layer, cfg.top_learning_rate if layer.gaussian_hidden else cfg.learning_rate, cfg.initial_momentum, cfg.weight_decay
            )
            for i, layer in enumerate(self.layers)
        }

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, optimizers: dict) -> dict[str, float]:
        cfg = self.config
        k = self.training_layer()
        self._freeze_all_but(k)
        epoch_in_layer = self.clock.epoch() - k * cfg.epochs_per_layer
        set_momentum(optimizers[f"layer{k}"], cfg.initial_momentum if epoch_in_layer < cfg.initial_momentum_epochs else cfg.momentum)
        flat = images.flatten(1)
        with torch.no_grad():
            inputs = self.up(torch.bernoulli(flat) if cfg.binarize else flat, k)
        terms = contrastive_divergence(self.layers[k], inputs, optimizers[f"layer{k}"], cfg.cd_steps)
        self.clock.tick()
        return {"layer": float(k), **terms}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Mean-field reconstructions through the layers trained so far (up to the last step's)."""
        depth = self.trained_layer() + 1
        return self.down(self.up(images.flatten(1), depth), depth).view_as(images)

    @torch.no_grad()
    def validate(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Squared error per image of the reconstruction through the layers trained so far."""
        error = sum((x - self.reconstruct(x)).square().sum().item() for x in images.split(1000)) / len(images)
        return {"loss": error, "layer": float(self.trained_layer())}

    @torch.no_grad()
    def preview(self, images: torch.Tensor) -> torch.Tensor:
        """Rows: inputs, reconstructions through the layers trained so far."""
        return torch.cat([images, self.reconstruct(images)])

    def graphs(self) -> dict[str, Graph]:
        top = self.config.hidden[-1]
        return {
            "encoder": encoder_graph(self, _dbn_codes, top)
        }

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float]:
        return encoder_retrieval(self.graphs()["encoder"].module, data)


def _dbn_codes(model: DBN, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder graph: the top layer's hidden means, and 1 where a unit's input is above 0 (a binary
    unit's probability above 1/2, a linear unit's mean above 0)."""
    top = model.layers[-1]
    x = top.hidden_input(model.up(image.flatten(1), len(model.layers) - 1))
    return (x if top.gaussian_hidden else torch.sigmoid(x)), (x > 0).to(torch.uint8)
