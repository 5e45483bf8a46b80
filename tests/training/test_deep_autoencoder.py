"""The deep autoencoder: pretraining phases, unrolling, fine-tuning, random initialisation, PCA baseline;
its binary (code noise) and sparse variants."""
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from training.deep_autoencoder import BinaryAutoencoder, DeepAutoencoder, SparseAutoencoder, pca_squared_error

SMALL = {"hidden": [16, 8, 4], "pretrain_epochs_per_layer": 1, "batch_size": 16}


@pytest.fixture
def images(mnist):
    return torch.from_numpy(mnist.train.images[:64, None])  # 4 steps an epoch


def pretrained(images) -> tuple[DeepAutoencoder, dict]:
    torch.manual_seed(0)
    model = DeepAutoencoder(DeepAutoencoder.Config(**SMALL))
    model.initialise(images, None)
    optimizers = model.optimizers()
    for step in range(12):  # 3 layers x 1 epoch x 4 steps
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.train_step(images[16 * (step % 4) :][:16], None, optimizers)
        changed = {_part(k) for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])}
        assert changed == {f"dbn.layers.{step // 4}"} | ({"encoder", "decoder"} if step == 11 else set()), step
    return model, optimizers  # one RBM at a time; the last step unrolls the stack


def _part(key: str) -> str:
    """"encoder", "decoder", "code_mean" or one RBM, "dbn.layers.<i>"."""
    return key.rsplit(".", 1)[0] if key.startswith("dbn.") else key.split(".")[0]


def test_pretraining_ends_by_unrolling_the_stack_with_transposed_weights(images):
    model, optimizers = pretrained(images)
    assert not model.pretraining()
    encoders = [m for m in model.encoder if isinstance(m, nn.Linear)]
    decoders = [m for m in model.decoder if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in encoders] == [(16, 784), (8, 16), (4, 8)]
    for rbm, encoder, decoder in zip(model.dbn.layers, encoders, reversed(decoders)):
        assert torch.equal(encoder.weight, rbm.weight.T) and torch.equal(encoder.bias, rbm.hidden_bias)
        assert torch.equal(decoder.weight, rbm.weight) and torch.equal(decoder.bias, rbm.visible_bias)
    assert isinstance(model.encoder[-1], nn.Linear)  # the linear code layer
    with torch.no_grad():  # the same function as the stack's up and down passes
        depth = len(model.dbn.layers)
        code = model.dbn.up(images.flatten(1), depth)
        torch.testing.assert_close(model.encode(images), code)
        torch.testing.assert_close(model.reconstruct(images), model.dbn.down(code, depth).view_as(images))


def test_fine_tuning_trains_only_the_unrolled_autoencoder(images):
    model, optimizers = pretrained(images)
    rbms = {k: v.clone() for k, v in model.dbn.state_dict().items()}
    model.train_step(images[:16], None, optimizers)
    assert all(torch.equal(v, model.dbn.state_dict()[k]) for k, v in rbms.items())
    first = [m for m in model.encoder if isinstance(m, nn.Linear)][0]
    torch.testing.assert_close(first.weight, model.dbn.layers[0].weight.T, atol=2e-3, rtol=0)  # one Adam step away
    assert not torch.equal(first.weight, model.dbn.layers[0].weight.T)
    assert not any(p.requires_grad for p in model.dbn.parameters())
    assert model.code_mean.abs().sum() > 0


def test_without_pretraining_fine_tuning_starts_from_a_random_initialisation(images):
    torch.manual_seed(0)
    model = DeepAutoencoder(DeepAutoencoder.Config(**SMALL, pretrained=False))
    assert not hasattr(model, "dbn") and set(model.optimizers()) == {"fine_tune"}
    first = model.encoder[0].weight
    assert first.std().item() == pytest.approx(1 / np.sqrt(3 * 784), rel=0.1)  # nn.Linear's default: U(+-1/sqrt(fan_in))
    last = [m for m in model.decoder if isinstance(m, nn.Linear)][-1]
    assert not torch.allclose(last.weight, first.T)
    before = first.clone()
    terms = model.train_step(images[:16], None, model.optimizers())
    assert not torch.equal(before, model.encoder[0].weight) and set(terms) == {"loss", "reconstruction"}


def test_the_binary_code_is_the_code_above_its_training_mean(images):
    model, optimizers = pretrained(images)
    for _ in range(3):
        model.train_step(images[:16], None, optimizers)
    model.eval()
    with torch.no_grad():
        code, bits = model.graphs()["encoder"].module(images)
    assert code.shape == (64, 4) and bits.dtype == torch.uint8
    assert torch.equal(bits, (code > model.code_mean).to(torch.uint8))


def test_validation_reconstructs_through_the_layers_trained_so_far(images):
    torch.manual_seed(0)
    model = DeepAutoencoder(DeepAutoencoder.Config(**SMALL))
    model.initialise(images, None)
    optimizers = model.optimizers()
    for _ in range(4):
        model.train_step(images[:16], None, optimizers)
    rbm = model.dbn.layers[0]
    with torch.no_grad():
        expected = rbm.visible_probabilities(rbm.hidden_mean(images.flatten(1))).view_as(images)
        torch.testing.assert_close(model.reconstruct(images), expected)  # layer 0's epoch is over, layer 1's not begun
    terms = model.validate(images, None)
    assert terms["squared_error"] == pytest.approx((images - expected).square().sum().item() / 64, rel=1e-5)


def test_pca_error_is_the_discarded_variance():
    u, w = np.array([1.0, 1, 0]) / np.sqrt(2), np.array([1.0, -1, 0]) / np.sqrt(2)
    mean = np.array([0.2, 0.5, 0.7])
    train = mean + np.stack([3 * u, -3 * u, 0.1 * w, -0.1 * w])  # spread along u, a little along w, none along z
    test = np.stack([np.array([1.0, 0, 0]), mean])
    off_u, off_w = (0.8 + 0.5) ** 2 / 2, 0.7**2  # the first test image, centred, along w and along z
    assert pca_squared_error(train, test, 1) == pytest.approx((off_u + off_w) / 2)
    assert pca_squared_error(train, test, 2) == pytest.approx(off_w / 2)
    assert pca_squared_error(train, test, 3) == pytest.approx(0, abs=1e-12)


def test_code_noise_goes_into_the_logistic_code_units_while_training(images):
    torch.manual_seed(0)
    model = BinaryAutoencoder(BinaryAutoencoder.Config(hidden=[16, 8], code_noise=4.0))
    assert not hasattr(model, "dbn")
    x = images[:16]
    with torch.no_grad():
        torch.manual_seed(1)
        code_input = model.encoder(x.flatten(1))
        noisy_code = torch.sigmoid(code_input + 4.0 * torch.randn_like(code_input))
        want = F.binary_cross_entropy_with_logits(model.decoder(noisy_code), x.flatten(1), reduction="sum").item() / 16
    torch.manual_seed(1)
    terms = model.train_step(x, None, model.optimizers())
    assert terms["reconstruction"] == pytest.approx(want, rel=1e-5) and terms["loss"] == terms["reconstruction"]
    model.eval()
    with torch.no_grad():
        code, bits = model.graphs()["encoder"].module(images)
    assert 0 < code.min() and code.max() < 1  # served without noise
    assert torch.equal(bits, (code > 0.5).to(torch.uint8))


def test_the_sparsity_penalty_is_the_kl_to_the_target_and_lowers_the_mean_activation(images):
    torch.manual_seed(0)
    model = SparseAutoencoder(SparseAutoencoder.Config(hidden=[16, 8], sparsity=5.0, sparsity_target=0.05))
    optimizers = model.optimizers()
    with torch.no_grad():
        mean = model.encode(images[:16]).mean(0)
    kl = (0.05 * torch.log(0.05 / mean) + 0.95 * torch.log(0.95 / (1 - mean))).sum().item()
    terms = model.train_step(images[:16], None, optimizers)
    assert terms["sparsity"] == pytest.approx(5.0 * kl, rel=1e-5)
    assert terms["loss"] == pytest.approx(terms["reconstruction"] + terms["sparsity"], rel=1e-6)
    for _ in range(30):
        model.train_step(images[:16], None, optimizers)
    with torch.no_grad():
        assert model.encode(images[:16]).mean() < mean.mean() - 0.1
