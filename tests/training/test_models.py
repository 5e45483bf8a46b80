"""Model contracts: every registered model, on a few MNIST images."""
import copy
import io

import numpy as np
import pytest
import torch
from torch.optim.swa_utils import update_bn

from latentserve.latents import sample_latents
from training.gan import AVERAGE_STATISTICS_BATCHES, latent_code
from training.registry import MODELS, build

SMALL = {
    "autoencoder": {"channels": 8, "code_dim": 8, "hash_bits": 16},
    "vae": {"hidden": 32, "latent_dim": 4},
    "lenet": {"channels": 4, "features": 16},
    "conv_vae": {"channels": 8, "latent_dim": 4},
    "dcgan": {"channels": 8, "latent_dim": 12, "refine_channels": 4, "categories": 10},
    "wgan_gp": {"channels": 8, "latent_dim": 12, "batch_size": 16, "critic_steps": 2, "refine_channels": 4, "categories": 10},
    "acgan": {"channels": 8, "latent_dim": 12, "categories": 10},
    "wgan": {"channels": 8, "latent_dim": 12, "batch_size": 16, "critic_steps": 2, "refine_channels": 4, "categories": 10},
    "m1": {"hidden": 32, "latent_dim": 4},
    "m2": {"hidden": 32, "latent_dim": 4},
    "m1m2": {"hidden": 32, "latent_dim": 4, "m1_hidden": 32, "m1_latent_dim": 4},
    "pseudo_label": {"labelled_batch_size": 4},
    "entropy_min": {"labelled_batch_size": 4},
    "fixmatch": {"labelled_batch_size": 4},
    "ssgan": {"labelled_batch_size": 4, "discriminator_layers": (16, 8), "generator_layers": (16,), "latent_dim": 8},
    "pix2pix": {"channels": 4},
    "cyclegan": {"channels": 4, "residual_blocks": 1},
    "pixelcnn": {"channels": 4, "layers": 1},
    "rbm": {"hidden": 16, "ais_runs": 4, "ais_betas": (10, 10, 10)},
    "dbn": {"hidden": [16, 8], "epochs_per_layer": 1},
    "deep_autoencoder": {"hidden": [16, 8, 4], "pretrain_epochs_per_layer": 1},
    "binary_autoencoder": {"hidden": [16, 8]},
    "sparse_autoencoder": {"hidden": [16, 8]},
}




def _with_capability(capability: str) -> list[str]:
    return [n for n in sorted(MODELS) if any(g.capability == capability for g in build(n, SMALL[n]).graphs().values())]


@pytest.fixture(params=sorted(MODELS))
def name(request):
    return request.param


def graph_inputs(graph, images: torch.Tensor) -> list[torch.Tensor]:
    """Inputs for a graph, by input name: the images, standard-normal latents, class labels, or uniforms
    (an RBM's Gibbs step)."""
    torch.manual_seed(0)
    n, made = len(images), []
    for spec in graph.inputs:
        if spec.name == "image":
            made.append(images)
        elif spec.name == "latent":
            made.append(torch.randn(n, *spec.dims))
        elif spec.name.endswith("_uniforms"):
            made.append(torch.rand(n, *spec.dims))
        else:
            made.append(torch.randint(0, graph.classes, (n, *spec.dims)))
    return made


def test_every_model_has_a_small_config():
    assert set(SMALL) == set(MODELS)


def test_graphs_give_their_declared_outputs(name, images):
    model = build(name, SMALL[name]).eval()
    for graph in model.graphs().values():
        with torch.no_grad():
            outputs = graph.module(*graph_inputs(graph, images))
        assert [spec.name for spec in graph.inputs] in (
            ["image"], ["latent"], ["latent", "label"], ["image", "hidden_uniforms"]
        )
        for spec, output in zip(graph.outputs, outputs, strict=True):
            assert output.shape == (len(images), *spec.dims)
            assert output.dtype == getattr(torch, spec.dtype)


@pytest.mark.parametrize("name", _with_capability("encode"))
def test_binary_code_is_zero_or_one(name, images):
    model = build(name, SMALL[name]).eval()
    with torch.no_grad():
        _, bits = model.graphs()["encoder"].module(images)
    assert set(bits.unique().tolist()) <= {0, 1}


@pytest.mark.parametrize("name", _with_capability("generate"))
def test_generated_images_lie_in_the_data_range(name, images):
    model = build(name, SMALL[name]).eval()
    (graph,) = [g for g in model.graphs().values() if g.capability == "generate"]
    with torch.no_grad():
        generated = graph.module(*graph_inputs(graph, images))[0]  # an RBM's Gibbs step also gives probabilities
    assert generated.min() >= 0 and generated.max() <= 1


def test_training_and_validation_terms_are_finite(name, images, labels):
    model = build(name, SMALL[name]).train()
    terms = model.train_step(images, labels, model.optimizers())
    assert terms and all(np.isfinite(v) for v in terms.values())
    validation = model.eval().validate(images, labels)
    assert validation and all(np.isfinite(v) for v in validation.values())


def test_save_load_round_trip(name, images):
    model = build(name, SMALL[name]).eval()
    buffer = io.BytesIO()
    torch.save({"config": model.config.model_dump(), "state_dict": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    restored = build(name, saved["config"]).eval()
    restored.load_state_dict(saved["state_dict"])
    assert restored.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key
    with torch.no_grad():
        for graph, restored_graph in zip(model.graphs().values(), restored.graphs().values()):
            inputs = graph_inputs(graph, images)
            for a, b in zip(graph.module(*inputs), restored_graph.module(*inputs)):
                assert torch.equal(a, b)


def test_one_training_step_changes_the_weights(name, images, labels):
    torch.manual_seed(0)
    model = build(name, SMALL[name]).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train_step(images, labels, model.optimizers())
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    trainable = [k for k, p in model.named_parameters() if p.requires_grad]
    assert set(trainable) <= set(changed)


def test_an_eval_step_changes_nothing(name, images, labels):
    model = build(name, SMALL[name]).eval()
    if hasattr(model, "served_generator"):
        model.served_generator()  # a GAN's weight average gets batch-norm statistics of its own on first use
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.validate(images, labels)
        model.preview(images[:4])
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_unknown_model_is_refused():
    with pytest.raises(KeyError, match="unknown model"):
        build("no-such-model")


def test_config_rejects_unknown_fields(name):
    with pytest.raises(ValueError):
        build(name, {"no_such_field": 1})


def test_a_gan_with_weight_averaging_serves_the_average(images, labels):
    torch.manual_seed(0)
    model = build("acgan", {**SMALL["acgan"], "ema_decay": 0.5}).train()
    optimizers = model.optimizers()
    assert not any(p is a for p in optimizers["generator"].param_groups[0]["params"] for a in model.generator_average.parameters())
    before = [p.clone() for p in model.generator.parameters()]
    model.train_step(images, labels, optimizers)
    for average, old, new in zip(model.generator_average.parameters(), before, model.generator.parameters()):
        torch.testing.assert_close(average, (old + new) / 2)  # decay 0.5: halfway from the old weights
    assert model.graphs()["generator"].module.model is model.generator_average


def test_a_gan_serves_its_average_with_batch_norm_statistics_of_its_own(images, labels):
    torch.manual_seed(0)
    model = build("dcgan", {**SMALL["dcgan"], "generator_norm": "batch"})  # as wgan_gp's and acgan's G (dcgan's has pixel norm)
    optimizers = model.optimizers()
    for _ in range(2):  # the second step must make the statistics be recomputed for the new weights
        model.train().train_step(images, labels, optimizers)
        average = model.eval().served_generator()
        reference = copy.deepcopy(average)  # PyTorch's own recomputation (SWA's) on the same latents
        generator = torch.Generator().manual_seed(0)
        update_bn([model.sample_inputs(64, generator)[0] for _ in range(AVERAGE_STATISTICS_BATCHES)], reference)
        for ours, theirs in zip(average.buffers(), reference.buffers()):
            torch.testing.assert_close(ours, theirs)
        assert not torch.allclose(average.net[1].running_mean, model.generator.net[1].running_mean)
        assert average.net[1].momentum == model.generator.net[1].momentum and not average.training


@pytest.mark.parametrize("truncation", [None, 0.5])
def test_the_latent_code_is_uniform_over_its_categories_truncated_or_not(truncation):
    latents = torch.from_numpy(sample_latents(0, 0, 50_000, 12, truncation))
    shares = torch.bincount(latent_code(latents, 10), minlength=10) / len(latents)
    assert torch.allclose(shares, torch.full((10,), 0.1), atol=0.006), shares


def test_a_latent_code_must_fit_in_the_latent():
    with pytest.raises(ValueError, match="categories"):
        build("dcgan", {"latent_dim": 8, "categories": 10})


def test_the_generator_sees_the_latent_code():
    torch.manual_seed(0)
    generator = build("dcgan", SMALL["dcgan"]).eval().served_generator()
    with torch.no_grad():  # the first 10 latent elements enter alike, so permuting them changes only the code
        generator.net[0].weight[:, 1:10] = generator.net[0].weight[:, :1]
        generator.net[0].weight[:, 12:] = torch.randn(generator.net[0].weight.shape[0], 10)  # the code's columns, visible
        latent = torch.randn(1, 12)
        latent[0, 0] = 5.0  # category 0
        other_category, same_category = latent.clone(), latent.clone()
        other_category[0, [0, 1]] = latent[0, [1, 0]]
        same_category[0, [1, 2]] = latent[0, [2, 1]]
        image, other, same = generator(torch.cat([latent, other_category, same_category]))
    assert latent_code(other_category, 10).item() == 1
    assert (image - same).abs().max() < 1e-6 < 1e-4 < (image - other).abs().max()


@pytest.mark.parametrize("penalty_interval", [1, 2])
def test_wgan_gp_takes_its_penalty_on_one_critic_step_in_penalty_interval(penalty_interval, images, labels, monkeypatch):
    torch.manual_seed(0)
    model = build("wgan_gp", {**SMALL["wgan_gp"], "penalty_interval": penalty_interval}).train()
    penalty, generator_forward = model._gradient_penalty, model.generator.forward
    calls = {"penalty": 0, "generator": 0}

    def counted(name, function):
        def call(*args):
            calls[name] += 1
            return function(*args)
        return call

    monkeypatch.setattr(model, "_gradient_penalty", counted("penalty", penalty))
    monkeypatch.setattr(model.generator, "forward", counted("generator", generator_forward))
    model.train_step(images, labels, model.optimizers())
    # 2 critic steps; G's own step reuses the last critic step's samples rather than drawing new ones
    assert calls == {"penalty": 2 // penalty_interval, "generator": 2}


def test_wgan_gp_penalty_interval_must_divide_the_critic_steps():
    with pytest.raises(ValueError, match="penalty_interval"):
        build("wgan_gp", {**SMALL["wgan_gp"], "critic_steps": 3, "penalty_interval": 2})


def test_wgan_clips_every_critic_weight_after_its_steps_and_uses_rmsprop(images, labels):
    torch.manual_seed(0)
    model = build("wgan", {**SMALL["wgan"], "clip": 0.01}).train()
    with torch.no_grad():
        for weight in model.discriminator.parameters():
            weight.mul_(100)  # far outside the box
    optimizers = model.optimizers()
    assert all(isinstance(o, torch.optim.RMSprop) for o in optimizers.values())
    model.train_step(images, labels, optimizers)
    weights = torch.cat([w.flatten() for w in model.discriminator.parameters()])
    assert weights.abs().max() <= 0.01 and (weights.abs() == 0.01).any()
