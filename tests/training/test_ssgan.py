"""The semi-supervised GAN's parts on a tiny sample: its loss terms, weight normalisation's
initialisation, the noise, the weight average it serves."""
import pytest
import torch
from torch.nn import functional as F

from training.registry import build
from training.semi_supervised import UNLABELLED

TINY = {"discriminator_layers": (32, 16), "generator_layers": (16,), "latent_dim": 8, "labelled_batch_size": 4}


@pytest.fixture
def model(mnist):
    torch.manual_seed(0)
    model = build("ssgan", TINY)
    model.initialise(torch.from_numpy(mnist.train.images[:100, None]), None)
    return model


def test_the_real_or_fake_term_is_the_k_plus_one_class_likelihood(model, images):
    model.eval()  # no noise: the logits below are the ones the loss sees
    unlabelled, fake = images[:8], model.sample(8)
    labels = torch.arange(4)
    supervised, real_fake = model.discriminator_losses(unlabelled, images[8:12], labels, fake)
    with torch.no_grad():
        z_real = model.discriminator.classify(unlabelled).double().exp().sum(1)  # Z(x); the fake class's logit is 0
        z_fake = model.discriminator.classify(fake).double().exp().sum(1)
        want = 0.5 * (-torch.log(z_real / (z_real + 1)).mean() - torch.log(1 / (z_fake + 1)).mean())
        want_supervised = F.cross_entropy(model.discriminator.classify(images[8:12]), labels)
    assert real_fake.item() == pytest.approx(want.item(), rel=1e-5)
    assert supervised.item() == pytest.approx(want_supervised.item(), rel=1e-5)


def test_initialisation_gives_every_layer_zero_mean_unit_variance_outputs_under_the_training_noise(mnist):
    torch.manual_seed(0)
    model = build("ssgan", TINY)
    batch = torch.from_numpy(mnist.train.images[:1000, None]).flatten(1)
    model.discriminator.initialise(batch)
    x = batch + 0.3 * torch.randn_like(batch)  # other noise than initialise drew: the statistics hold, not the sample
    for layer in (*model.discriminator.hidden, model.discriminator.out):
        out = layer(x).detach()
        assert out.mean(0).abs().mean() < 0.1 and abs(out.std(0).mean() - 1) < 0.1
        x = F.relu(out) + 0.5 * torch.randn_like(out)
    assert not any(name.endswith("hidden.0.scale") for name, _ in model.named_parameters())  # fixed once set


def test_feature_matching_is_zero_for_the_data_itself_and_trains_only_the_generator(model, images):
    model.eval()
    assert model.feature_matching(images, images).item() == 0
    model.train()
    loss = model.feature_matching(images, model.sample(16))
    loss.backward()
    assert loss.item() > 0
    assert all(p.grad is None for p in model.discriminator.parameters())
    assert all(p.grad is not None for p in model.generator.parameters())
    assert all(p.requires_grad for p in model.discriminator.parameters())  # D trains again in its own step


def test_noise_in_training_only(model, images):
    model.train()
    assert not torch.equal(model.discriminator.classify(images), model.discriminator.classify(images))
    model.eval()
    assert torch.equal(model.discriminator.classify(images), model.discriminator.classify(images))


def test_a_step_takes_the_batch_tail_as_labelled_and_moves_the_served_average(mnist, images):
    torch.manual_seed(0)
    model = build("ssgan", {**TINY, "ema_decay": 0.5})
    model.initialise(images, None)
    labels = torch.full((16,), UNLABELLED)
    labels[-4:] = torch.from_numpy(mnist.train.labels[12:16]).long()  # as the loop's batches end
    before = [p.clone() for p in model.discriminator.parameters()]
    terms = model.train().train_step(images, labels, model.optimizers())
    assert all(torch.isfinite(torch.tensor(v)) for v in terms.values())
    for average, old, new in zip(model.discriminator_average.parameters(), before, model.discriminator.parameters()):
        torch.testing.assert_close(average, (old + new) / 2)
    assert model.graphs()["classifier"].module.model is model.discriminator_average
