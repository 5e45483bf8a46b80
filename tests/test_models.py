"""Model contracts: every registered model, on a few MNIST images."""
import io

import numpy as np
import pytest
import torch

from training.registry import MODELS, build

SMALL = {"autoencoder": {"channels": 8, "code_dim": 8, "hash_bits": 16}, "vae": {"hidden": 32, "latent_dim": 4}}


@pytest.fixture(params=sorted(MODELS))
def name(request):
    return request.param


@pytest.fixture
def images(mnist):
    return torch.from_numpy(mnist.train.images[:16, None])


def test_every_model_has_a_small_config():
    assert set(SMALL) == set(MODELS)


def test_graphs_give_their_declared_outputs(name, images):
    model = build(name, SMALL[name]).eval()
    for graph in model.graphs().values():
        with torch.no_grad():
            outputs = graph.module(images)
        assert [spec.name for spec in graph.inputs] == ["image"]
        for spec, output in zip(graph.outputs, outputs, strict=True):
            assert output.shape == (len(images), *spec.dims)
            assert output.dtype == getattr(torch, spec.dtype)


def test_binary_code_is_zero_or_one(name, images):
    model = build(name, SMALL[name]).eval()
    with torch.no_grad():
        _, bits = model.graphs()["encoder"].module(images)
    assert set(bits.unique().tolist()) <= {0, 1}


def test_loss_is_finite_and_names_its_terms(name, images):
    losses = build(name, SMALL[name]).loss(images)
    assert torch.isfinite(losses.total)
    assert losses.terms and all(np.isfinite(v) for v in losses.terms.values())


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
            for a, b in zip(graph.module(images), restored_graph.module(images)):
                assert torch.equal(a, b)


def test_one_training_step_changes_the_weights(name, images):
    torch.manual_seed(0)
    model = build(name, SMALL[name]).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    optimizer.zero_grad()
    model.loss(images).total.backward()
    optimizer.step()
    changed = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    trainable = [k for k, p in model.named_parameters()]
    assert set(trainable) <= set(changed)


def test_an_eval_step_changes_nothing(name, images):
    model = build(name, SMALL[name]).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.loss(images)
        model.preview(images[:4])
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_unknown_model_is_refused():
    with pytest.raises(KeyError, match="unknown model"):
        build("no-such-model")


def test_config_rejects_unknown_fields(name):
    with pytest.raises(ValueError):
        build(name, {"no_such_field": 1})
