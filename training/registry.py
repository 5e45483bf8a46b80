"""Every trainable model by name: what `latentserve train <name>` builds and a checkpoint records."""
from training.autoencoder import ConvAutoencoder
from training.classifier import LeNet
from training.conv_vae import ConvVAE
from training.deep_autoencoder import BinaryAutoencoder, DeepAutoencoder, SparseAutoencoder
from training.gan import ACGAN, DCGAN, WGAN, WGANGP
from training.kingma import M1, M1M2, M2
from training.pixelcnn import PixelCNN
from training.rbm import DBN, RBM
from training.self_training import EntropyMin, FixMatch, SelfTraining
from training.ssgan import SSGAN
from training.translation import CycleGAN, Pix2Pix
from training.vae import VAE

MODELS = {
    "autoencoder": ConvAutoencoder, "vae": VAE, "lenet": LeNet,
    "conv_vae": ConvVAE, "dcgan": DCGAN, "wgan": WGAN, "wgan_gp": WGANGP, "acgan": ACGAN,
    "m1": M1, "m2": M2, "m1m2": M1M2,
    "pseudo_label": SelfTraining, "entropy_min": EntropyMin, "fixmatch": FixMatch, "ssgan": SSGAN,
    "pix2pix": Pix2Pix, "cyclegan": CycleGAN,
    "pixelcnn": PixelCNN,
    "rbm": RBM, "dbn": DBN, "deep_autoencoder": DeepAutoencoder,
    "binary_autoencoder": BinaryAutoencoder, "sparse_autoencoder": SparseAutoencoder,
}


def model_class(name: str) -> type:
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build(name: str, config: dict | None = None):
    cls = model_class(name)
    return cls(cls.Config(**(config or {})))
