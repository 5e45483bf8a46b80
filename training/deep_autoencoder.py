"""Hinton & Salakhutdinov 2006, "Reducing the dimensionality of data with neural networks": a deep
autoencoder 784-1000-500-250-30 of logistic units with a linear 30-d code, pretrained as a stack of RBMs
(the top one with linear hidden units), unrolled into an encoder and a decoder with the transposed
weights, then fine-tuned on the cross-entropy of the reconstruction.

Phases, by epoch: with `pretrained`, the stack's layers in turn for `pretrain_epochs_per_layer` epochs
each (training/rbm.py's DBN, on the grey levels as probabilities as in their code), then fine-tuning for
the remaining `epochs`; without, fine-tuning alone from PyTorch's default initialisation, the comparison
the paper draws. The last pretraining step unrolls the stack (so a run stopped there serves the pretrained
network; one stopped earlier serves an untrained encoder); the checkpoint holds both, so a run resumes in
either phase. Fine-tuning uses Adam, not the paper's conjugate gradients.

Binary code: bit i is 1 where code_i is above its mean over the training images, a running average of
the fine-tuning batches' means (like batch norm's); the linear code units are not centred at zero.

Two variants give the code layer logistic units (bits: code above 1/2), each registered with its recipe:
- `binary_autoencoder`, long binary codes (Krizhevsky & Hinton 2011): Gaussian noise of deviation
  `code_noise` is added to the code units' input while fine-tuning, so the decoder can only read codes
  saturated far from 1/2 and the code becomes binary in all but name (Salakhutdinov & Hinton's semantic
  hashing used the same trick).
- `sparse_autoencoder`: the loss adds `sparsity` x the sum over code units of KL(`sparsity_target` ||
  the unit's mean activation over the batch), the sparse autoencoder's penalty (Ng's CS294A notes).
Both default to no pretraining: from a random start the 30-d code retrieves far better than the
pretrained one (docs/benchmarks.md), and the variants are judged on retrieval.
"""
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from latentserve.contract import PIXELS
from latentserve.datasets import Mnist
from training.base import Graph, encoder_graph, optimizer_step
from training.evaluation import encoder_retrieval
from training.retrieval import pca_projection
from training.rbm import DBN, SGDConfig

CODE_MEAN_MOMENTUM = 0.01
SHARED_WITH_PRETRAINING = {"batch_size", "momentum", "initial_momentum", "initial_momentum_epochs", "weight_decay", "cd_steps", "seed"}


class DeepAutoencoderConfig(SGDConfig):
    epochs: int = 90  # pretraining's len(hidden) * pretrain_epochs_per_layer included
    learning_rate: float = 1e-3  # Adam, fine-tuning
    hidden: list[int] = [1000, 500, 250, 30]
    pretrained: bool = True
    pretrain_epochs_per_layer: int = 10
    pretrain_learning_rate: float = 0.1
    top_learning_rate: float = 0.001  # the linear code layer's RBM
    code_noise: float = 0.0  # > 0: logistic code units, this much Gaussian noise on their input while fine-tuning
    sparsity: float = 0.0  # > 0: logistic code units, this weight on the KL sparsity penalty
    sparsity_target: float = 0.05  # the mean activation the penalty pulls each code unit towards

    @property
    def logistic_code(self) -> bool:
        return self.code_noise > 0 or self.sparsity > 0


class BinaryAutoencoderConfig(DeepAutoencoderConfig):
    epochs: int = 40
    hidden: list[int] = [1000, 500, 250, 256]
    pretrained: bool = False
    code_noise: float = 4.0


class SparseAutoencoderConfig(DeepAutoencoderConfig):
    epochs: int = 40
    hidden: list[int] = [1000, 500, 250, 256]
    pretrained: bool = False
    sparsity: float = 1.0


class DeepAutoencoder(nn.Module):
    Config = DeepAutoencoderConfig

    def __init__(self, config: DeepAutoencoderConfig):
        super().__init__()
        self.config = config
        sizes = [PIXELS, *config.hidden]
        self.encoder = _stack(sizes)
        self.decoder = _stack(sizes[::-1])  # logits
        self.register_buffer("code_mean", torch.zeros(config.hidden[-1]))
        if config.pretrained:
            self.dbn = DBN(DBN.Config(
                epochs=len(config.hidden) * config.pretrain_epochs_per_layer,
                hidden=config.hidden, gaussian_top=not config.logistic_code, binarize=False,
                epochs_per_layer=config.pretrain_epochs_per_layer,
                learning_rate=config.pretrain_learning_rate, top_learning_rate=config.top_learning_rate,
                **config.model_dump(include=SHARED_WITH_PRETRAINING),
            ))
        self._set_trainable()

    def pretraining(self) -> bool:
        return self.config.pretrained and int(self.dbn.clock.steps) < self.dbn.pretraining_steps()

    def _set_trainable(self) -> None:
        pretraining = self.pretraining()
        if self.config.pretrained and not pretraining:
            self.dbn.requires_grad_(False)
        self.encoder.requires_grad_(not pretraining)
        self.decoder.requires_grad_(not pretraining)

    @torch.no_grad()
    def unroll(self) -> None:
        """Encoder layer i <- RBM i's weights and hidden biases; the mirrored decoder layer <- the transposed
        weights and the visible biases."""
        encoders, decoders = _linears(self.encoder), _linears(self.decoder)[::-1]
        for rbm, encoder, decoder in zip(self.dbn.layers, encoders, decoders):
            encoder.weight.copy_(rbm.weight.T)
            encoder.bias.copy_(rbm.hidden_bias)
            decoder.weight.copy_(rbm.weight)
            decoder.bias.copy_(rbm.visible_bias)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self._code(self.encoder(images.flatten(1)))

    def _code(self, code_input: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(code_input) if self.config.logistic_code else code_input

    def code_threshold(self) -> torch.Tensor | float:
        """Bits: 1 where the code is above this."""
        return 0.5 if self.config.logistic_code else self.code_mean

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(code)).view(-1, 1, 28, 28)

    def initialise(self, train_images: torch.Tensor, train_labels: torch.Tensor) -> None:
        if self.config.pretrained:
            self.dbn.initialise(train_images, train_labels)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        fine_tune = torch.optim.Adam([*self.encoder.parameters(), *self.decoder.parameters()], lr=self.config.learning_rate)
        return {**(self.dbn.optimizers() if self.config.pretrained else {}), "fine_tune": fine_tune}

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, optimizers: dict) -> dict[str, float]:
        self._set_trainable()
        if self.pretraining():
            terms = self.dbn.train_step(images, labels, optimizers)
            if not self.pretraining():  # that was the last step of the top layer's last epoch
                self.unroll()
            return terms
        cfg = self.config
        code_input = self.encoder(images.flatten(1))
        if cfg.code_noise:
            code_input = code_input + cfg.code_noise * torch.randn_like(code_input)
        code = self._code(code_input)
        reconstruction = F.binary_cross_entropy_with_logits(self.decoder(code), images.flatten(1), reduction="sum") / len(images)
        terms = {"reconstruction": reconstruction}
        if cfg.sparsity:
            terms["sparsity"] = cfg.sparsity * _bernoulli_kl(cfg.sparsity_target, code.mean(0)).sum()
        loss = sum(terms.values())
        optimizer_step(optimizers["fine_tune"], loss)
        self.code_mean.lerp_(code.detach().mean(0), CODE_MEAN_MOMENTUM)
        return {"loss": loss.item(), **{key: value.item() for key, value in terms.items()}}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Through the stack trained so far while pretraining, then through the encoder and decoder."""
        return self.dbn.reconstruct(images) if self.pretraining() else self.decode(self.encode(images))

    @torch.no_grad()
    def validate(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Cross-entropy and squared error per image of the reconstructions."""
        cross_entropy = squared = 0.0
        for x in images.split(1000):
            reconstruction = self.reconstruct(x)
            cross_entropy += F.binary_cross_entropy(reconstruction, x, reduction="sum").item()
            squared += (x - reconstruction).square().sum().item()
        return {"loss": cross_entropy / len(images), "squared_error": squared / len(images)}

    @torch.no_grad()
    def preview(self, images: torch.Tensor) -> torch.Tensor:
        """Rows: inputs, reconstructions."""
        return torch.cat([images, self.reconstruct(images)])

    def graphs(self) -> dict[str, Graph]:
        dim = self.config.hidden[-1]
        return {
            "encoder": encoder_graph(self, _codes, dim)
        }

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float]:
        """The paper's figure, squared error per test image (pixels in [0, 1]), for the autoencoder and for
        PCA with as many components as the code (fitted on the training images); retrieval scores; for a
        logistic code, the fraction of its test values within 0.1 of 0 or 1 (how binary it became)."""
        test = torch.from_numpy(data.test.images[:, None])
        codes = torch.cat([self.encode(x) for x in test.split(1000)])
        squared = sum((x - self.decode(c)).square().sum().item() for x, c in zip(test.split(1000), codes.split(1000))) / len(test)
        components = self.config.hidden[-1]
        saturation = {"code_saturated": ((codes - 0.5).abs() > 0.4).float().mean().item()} if self.config.logistic_code else {}
        return {
            "test_squared_error": squared,
            **saturation,
            "pca_test_squared_error": pca_squared_error(data.train.images, data.test.images, components),
            **encoder_retrieval(self.graphs()["encoder"].module, data),
        }


def _stack(sizes: list[int]) -> nn.Sequential:
    """Linear layers through `sizes`, logistic between them, none after the last."""
    layers = []
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(n_in, n_out), nn.Sigmoid()]
    return nn.Sequential(*layers[:-1])


def _linears(stack: nn.Sequential) -> list[nn.Linear]:
    return [layer for layer in stack if isinstance(layer, nn.Linear)]


def pca_squared_error(train: np.ndarray, test: np.ndarray, components: int) -> float:
    """Squared error per test image of its projection onto the training images' first `components`
    principal components (about their mean)."""
    mean, basis = pca_projection(train, components)
    centred = test.reshape(len(test), -1).astype(np.float64) - mean
    residual = centred - centred @ basis @ basis.T
    return float(np.square(residual).sum(1).mean())


def _bernoulli_kl(target: float, mean: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(target) || Bernoulli(mean)) per unit."""
    mean = mean.clamp(1e-6, 1 - 1e-6)
    return target * torch.log(target / mean) + (1 - target) * torch.log((1 - target) / (1 - mean))


def _codes(model: DeepAutoencoder, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder graph: the code, and its bits."""
    code = model.encode(image)
    return code, (code > model.code_threshold()).to(torch.uint8)


class BinaryAutoencoder(DeepAutoencoder):
    Config = BinaryAutoencoderConfig


class SparseAutoencoder(DeepAutoencoder):
    Config = SparseAutoencoderConfig
