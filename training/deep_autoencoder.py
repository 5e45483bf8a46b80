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
"""
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from latentserve.contract import ENCODE, IMAGE_SPEC, binary_code_spec, code_spec
from latentserve.datasets import Mnist
from training.base import ExportGraph, Graph, optimizer_step
from training.evaluation import encoder_retrieval
from training.retrieval import pca_projection
from training.rbm import DBN, PIXELS, SGDConfig

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
                hidden=config.hidden, gaussian_top=True, binarize=False,
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
        return self.encoder(images.flatten(1))

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
        code = self.encode(images)
        loss = F.binary_cross_entropy_with_logits(self.decoder(code), images.flatten(1), reduction="sum") / len(images)
        optimizer_step(optimizers["fine_tune"], loss)
        self.code_mean.lerp_(code.detach().mean(0), CODE_MEAN_MOMENTUM)
        return {"loss": loss.item()}

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
            "encoder": Graph(
                module=ExportGraph(self, _codes),
                inputs=(IMAGE_SPEC,),
                outputs=(code_spec(dim), binary_code_spec(dim)),
                capability=ENCODE,
            )
        }

    @torch.no_grad()
    def evaluate(self, data: Mnist) -> dict[str, float]:
        """The paper's figure, squared error per test image (pixels in [0, 1]), for the autoencoder and for
        PCA with as many components as the code (fitted on the training images); retrieval scores."""
        test = torch.from_numpy(data.test.images[:, None])
        squared = sum((x - self.decode(self.encode(x))).square().sum().item() for x in test.split(1000)) / len(test)
        components = self.config.hidden[-1]
        return {
            "test_squared_error": squared,
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


def _codes(model: DeepAutoencoder, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder graph: the code, and 1 where it is above its training mean."""
    code = model.encode(image)
    return code, (code > model.code_mean).to(torch.uint8)
