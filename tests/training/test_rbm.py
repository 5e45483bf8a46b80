"""RBMs and DBNs: contrastive divergence, Gibbs steps driven by uniforms, AIS against exact partition
functions, greedy layer-wise training through the training loop."""
import math

import pytest
import torch

from training.rbm import (
    DBN, RBM, RBMLayer, _all_states, ais_log_partition, ais_schedule, base_rate_bias, exact_log_partition, reconstruction_error,
)
from training.train import load_checkpoint, train


def random_rbm(visible: int, hidden: int, scale: float = 1.0, seed: int = 0) -> RBMLayer:
    torch.manual_seed(seed)
    rbm = RBMLayer(visible, hidden)
    with torch.no_grad():
        rbm.weight.normal_(0, scale)
        rbm.visible_bias.normal_(0, 1)
        rbm.hidden_bias.normal_(0, 1)
    return rbm


def test_free_energy_marginalises_the_hidden_units():
    rbm = random_rbm(5, 3)
    v, h = _all_states(5).float(), _all_states(3).float()
    energy = -(v @ rbm.visible_bias)[:, None] - (h @ rbm.hidden_bias)[None] - v @ rbm.weight @ h.T  # (v, h)
    with torch.no_grad():
        torch.testing.assert_close(rbm.free_energy(v), -torch.logsumexp(-energy, 1))
        torch.testing.assert_close(exact_log_partition(rbm), torch.logsumexp(-energy.flatten(), 0).item())


def test_linear_hidden_units_free_energy_integrates_the_gaussian():
    rbm = RBMLayer(3, 1, gaussian_hidden=True)
    with torch.no_grad():
        rbm.weight.copy_(torch.tensor([[0.5], [-1.0], [0.3]]))
        rbm.hidden_bias.fill_(0.2)
        v = torch.tensor([[1.0, 0, 1], [0, 1, 1]])
        h = torch.linspace(-15, 15, 30001, dtype=torch.float64)
        energy = -(v @ rbm.visible_bias)[:, None] - (0.2 + v @ rbm.weight).double() * h + h**2 / 2  # (v, h)
        log_integral = torch.logsumexp(-energy, 1) + math.log(h[1] - h[0]) - 0.5 * math.log(2 * math.pi)
        torch.testing.assert_close(-rbm.free_energy(v).double(), log_integral, atol=1e-5, rtol=0)


def test_exact_partition_function_is_the_same_summed_over_either_layer():
    rbm = random_rbm(7, 4)
    transposed = RBMLayer(4, 7)
    with torch.no_grad():
        transposed.weight.copy_(rbm.weight.T)
        transposed.visible_bias.copy_(rbm.hidden_bias)
        transposed.hidden_bias.copy_(rbm.visible_bias)
    assert exact_log_partition(rbm) == pytest.approx(exact_log_partition(transposed), abs=1e-9)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_ais_matches_the_exact_partition_function(scale):
    rbm = random_rbm(12, 6, scale)
    base = base_rate_bias(torch.bernoulli(torch.full((100, 12), 0.3), generator=torch.Generator().manual_seed(1)))
    exact = exact_log_partition(rbm)
    log_z, low, high = ais_log_partition(rbm, 100, ais_schedule((100, 400, 1000)), torch.Generator().manual_seed(0), base)
    assert abs(log_z - exact) < 0.1
    assert low < exact < high and low < log_z < high


def test_gibbs_step_is_a_function_of_its_uniforms_row_by_row():
    rbm = random_rbm(20, 8)
    generator = torch.Generator().manual_seed(0)
    v = torch.bernoulli(torch.full((5, 20), 0.5), generator=generator)
    hidden_uniforms, visible_uniforms = torch.rand(5, 8, generator=generator), torch.rand(5, 20, generator=generator)
    with torch.no_grad():
        sample, p = rbm.gibbs_step(v, hidden_uniforms, visible_uniforms)
        again, p_again = rbm.gibbs_step(v, hidden_uniforms, visible_uniforms)
        rows = [rbm.gibbs_step(v[i : i + 1], hidden_uniforms[i : i + 1], visible_uniforms[i : i + 1]) for i in range(5)]
    assert torch.equal(sample, again) and torch.equal(p, p_again)
    assert torch.equal(sample, torch.cat([s for s, _ in rows]))
    torch.testing.assert_close(p, torch.cat([q for _, q in rows]))
    assert torch.equal(sample, (visible_uniforms < p).float())
    assert set(sample.unique().tolist()) <= {0.0, 1.0}


def test_the_gibbs_graph_is_one_gibbs_step_on_images():
    model = RBM(RBM.Config(hidden=10)).eval()
    graph = model.graphs()["gibbs"]
    assert [s.name for s in graph.inputs] == ["image", "hidden_uniforms"]
    assert [s.name for s in graph.outputs] == ["next_probabilities"]
    generator = torch.Generator().manual_seed(0)
    image = torch.bernoulli(torch.full((3, 1, 28, 28), 0.3), generator=generator)
    hidden_uniforms, visible_uniforms = torch.rand(3, 10, generator=generator), torch.rand(3, 784, generator=generator)
    with torch.no_grad():
        (probabilities,) = graph.module(image, hidden_uniforms)
        _, p = model.gibbs_step(image.flatten(1), hidden_uniforms, visible_uniforms)
    assert probabilities.shape == (3, 1, 28, 28)
    assert torch.equal(probabilities.flatten(1), p)


@pytest.mark.parametrize("persistent", [False, True])
def test_contrastive_divergence_lowers_the_reconstruction_error(mnist, persistent):
    torch.manual_seed(0)
    images = torch.from_numpy(mnist.train.images[:64, None])
    model = RBM(RBM.Config(hidden=64, batch_size=64, persistent=persistent, cd_steps=1 if not persistent else 5))
    model.initialise(images, None)
    optimizers = model.optimizers()
    before = model.validate(images, None)["loss"]
    chains = model.chains.clone() if persistent else None
    for _ in range(40):
        terms = model.train_step(images, None, optimizers)
    assert model.validate(images, None)["loss"] < 0.8 * before
    assert set(terms) == {"reconstruction", "free_energy_gap"}
    if persistent:
        assert not torch.equal(chains, model.chains)  # the fantasy particles moved, and live in the checkpoint
        assert "chains" in model.state_dict()


def test_momentum_rises_after_the_initial_epochs(mnist):
    images = torch.from_numpy(mnist.train.images[:32, None])
    model = RBM(RBM.Config(hidden=8, batch_size=16, initial_momentum_epochs=1))
    model.initialise(images, None)  # 2 steps an epoch
    optimizers = model.optimizers()
    momenta = []
    for _ in range(4):
        model.train_step(images[:16], None, optimizers)
        momenta.append(optimizers["rbm"].param_groups[0]["momentum"])
    assert momenta == [0.5, 0.5, 0.9, 0.9]


def test_rbm_evaluate_reports_the_test_log_likelihood_within_its_interval(small_mnist):
    torch.manual_seed(0)
    model = RBM(RBM.Config(hidden=8, ais_runs=20, ais_betas=(50, 100, 200)))
    model.initialise(torch.from_numpy(small_mnist.train.images[:, None]), None)  # near the base rates: AIS is easy
    metrics = model.eval().evaluate(small_mnist)
    assert metrics["test_log_likelihood_low"] <= metrics["test_log_likelihood"] <= metrics["test_log_likelihood_high"] < 0
    assert metrics["log_partition_low"] <= metrics["log_partition"] <= metrics["log_partition_high"]


def test_dbn_trains_its_layers_greedily_through_the_training_loop(tmp_path, small_mnist):
    config = {"hidden": [32, 16], "epochs_per_layer": 1, "batch_size": 128}  # 512 images: 4 steps an epoch
    torch.manual_seed(0)
    initial = DBN(DBN.Config(**config)).state_dict()
    first = load_checkpoint(train("dbn", tmp_path / "split", small_mnist, {**config, "epochs": 1}, threads=1))
    second = load_checkpoint(train("dbn", tmp_path / "split", small_mnist, {"epochs": 2}, threads=1))
    straight = load_checkpoint(train("dbn", tmp_path / "straight", small_mnist, {**config, "epochs": 2}, threads=1))
    for name in ("weight", "hidden_bias", "visible_bias"):
        assert not torch.equal(first["state_dict"][f"layers.0.{name}"], initial[f"layers.0.{name}"])
        assert torch.equal(first["state_dict"][f"layers.1.{name}"], initial[f"layers.1.{name}"])  # waits for its epoch
        assert torch.equal(second["state_dict"][f"layers.0.{name}"], first["state_dict"][f"layers.0.{name}"])  # done
        assert not torch.equal(second["state_dict"][f"layers.1.{name}"], initial[f"layers.1.{name}"])
    assert [entry["valid"]["layer"] for entry in second["history"]] == [0, 1]
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(value, second["state_dict"][key], msg=key)  # resuming changes nothing


def test_dbn_trains_layer_two_on_layer_one_probabilities(mnist, monkeypatch):
    images = torch.from_numpy(mnist.train.images[:32, None])
    model = DBN(DBN.Config(hidden=[16, 8], epochs_per_layer=1, batch_size=16, binarize=False))
    model.initialise(images, None)
    optimizers = model.optimizers()
    model.train_step(images[:16], None, optimizers)
    model.train_step(images[16:], None, optimizers)
    seen = []
    monkeypatch.setattr("training.rbm.contrastive_divergence", lambda rbm, data, *args: seen.append((rbm, data)) or {})
    model.train_step(images[:16], None, optimizers)
    (rbm, data), = seen
    assert rbm is model.layers[1]
    torch.testing.assert_close(data, model.layers[0].hidden_mean(images[:16].flatten(1)))


def test_reconstruction_error_is_squared_error_per_image():
    rbm = random_rbm(4, 2)
    v = torch.tensor([[1.0, 0, 1, 0], [0, 0, 1, 1]])
    with torch.no_grad():
        hidden = torch.sigmoid(v @ rbm.weight + rbm.hidden_bias)
        expected = (v - torch.sigmoid(hidden @ rbm.weight.T + rbm.visible_bias)).square().sum(1)
    assert reconstruction_error(rbm, v) == pytest.approx(expected.mean().item())


def test_eval_rbm_prints_each_runs_figures_as_its_model_evaluates_them(tmp_path, small_mnist, mnist, capsys):
    from benchmarks import rbm_likelihood

    config = {"hidden": 8, "epochs": 1, "cd_steps": 1, "ais_runs": 10, "ais_betas": (20, 40, 80)}
    path = train("rbm", tmp_path, small_mnist, config, threads=1)
    capsys.readouterr()
    rbm_likelihood.main([path])
    (row,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {path} ")]
    model = RBM(RBM.Config(**config)).eval()
    model.load_state_dict(load_checkpoint(path)["state_dict"])
    want = model.evaluate(mnist)
    assert f"| {want['log_partition']:.2f} (" in row and f"| {want['test_log_likelihood']:.2f} (" in row
    assert "| CD-1, SGD 0.05 | 1 |" in row
    with pytest.raises(SystemExit):
        rbm_likelihood.main([])
