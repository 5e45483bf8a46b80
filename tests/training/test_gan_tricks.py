"""The GAN trainer's tricks (issue 30's ablation): each option's contract, and every option off giving
the computation the trainer had before the options existed."""
import pytest
import torch

from training.gan import MinibatchDiscrimination, MinibatchStddev, PixelNorm
from training.registry import build

# A small DCGAN with every option off (dcgan's defaults turn three on since v6)
DCGAN = {"channels": 8, "latent_dim": 12, "refine_channels": 4, "categories": 10,
         "generator_norm": "batch", "minibatch_discrimination": 0, "minibatch_stddev": False}
OPTIONS = {
    "minibatch_discrimination": {"minibatch_discrimination": 8},
    "minibatch_stddev": {"minibatch_stddev": True},
    "pixel_norm": {"generator_norm": "pixel"},
}


def test_with_every_option_off_the_trainer_computes_what_it_did_before_the_options(images, labels):
    # train-step terms and the sum of 4 served samples, measured with the trainer of commit e73c4f0
    torch.manual_seed(0)
    model = build("dcgan", DCGAN).train()
    terms = model.train_step(images, labels, model.optimizers())
    model.eval()
    with torch.no_grad():
        samples = model.served_generator()(*model.sample_inputs(4, torch.Generator().manual_seed(0)))
    assert terms == pytest.approx({"d_loss": 5.826197, "g_loss": 5.219802}, abs=1e-5)
    assert samples.sum().item() == pytest.approx(1468.9325, abs=1e-3)


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_an_option_changes_the_computation_trains_every_weight_and_keeps_the_graph_contract(option, images, labels):
    torch.manual_seed(0)
    model = build("dcgan", {**DCGAN, **OPTIONS[option]}).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizers = model.optimizers()
    terms = [model.train_step(images, labels, optimizers) for _ in range(2)]  # history's pull starts at the second step
    torch.manual_seed(0)
    plain = build("dcgan", DCGAN).train()
    plain_optimizers = plain.optimizers()
    assert terms != [plain.train_step(images, labels, plain_optimizers) for _ in range(2)]
    changed = {k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])}
    assert {k for k, p in model.named_parameters() if p.requires_grad} <= changed
    graph = model.eval().graphs()["generator"]
    with torch.no_grad():
        (generated,) = graph.module(torch.randn(5, 12))
    assert generated.shape == (5, 1, 28, 28) and 0 <= generated.min() and generated.max() <= 1


def test_pixel_norm_gives_each_pixel_unit_mean_square_features():
    x = torch.randn(3, 6, 5, 5) * 7
    normalised = PixelNorm(6)(x)
    torch.testing.assert_close((normalised**2).mean(1), torch.ones(3, 5, 5), rtol=1e-4, atol=1e-4)
    flat = PixelNorm(6)(x.flatten(1))  # the first layer's flat output: 6 channels of 25 pixels
    torch.testing.assert_close(flat, normalised.flatten(1))


def test_minibatch_features_see_the_other_examples():
    torch.manual_seed(0)
    layer = MinibatchDiscrimination(10, kernels=4)
    x = torch.randn(5, 10)
    out = layer(x)
    assert out.shape == (5, 14) and torch.equal(out[:, :10], x)
    other = x.clone()
    other[4] += 3
    assert not torch.allclose(layer(other)[0, 10:], out[0, 10:])  # example 0's features moved with example 4
    copies = layer(x[:1].expand(5, 10))  # identical examples: each is exp(0) = 1 from the 4 others
    torch.testing.assert_close(copies[:, 10:], torch.full((5, 4), 4.0))
    spread = MinibatchStddev()(torch.randn(6, 3, 7, 7))
    assert spread.shape == (6, 4, 7, 7) and spread[:, 3].std() == 0
    assert MinibatchStddev()(torch.ones(6, 3, 7, 7))[:, 3].max() < 1e-3
