"""The semi-supervised protocol and methods (training/semi_supervised.py, kingma.py, self_training.py)."""
import numpy as np
import pytest
import torch

from training.augmentation import strong_augment
from training.kingma import M2Network
from training.registry import build
from training.self_training import SelfTraining
from training.semi_supervised import labelled_indices
from training.train import load_checkpoint, load_model, train

TINY_CNN = {"epochs": 1, "batch_size": 64, "labelled_batch_size": 8, "labels_per_class": 2}


def test_labelled_images_are_per_class_and_set_by_the_data_seed_alone(mnist):
    labels = mnist.train.labels
    chosen = labelled_indices(labels, 10, data_seed=0)
    assert len(chosen) == 100 and len(set(chosen)) == 100
    assert np.bincount(labels[chosen], minlength=10).tolist() == [10] * 10
    assert np.array_equal(chosen, labelled_indices(labels, 10, data_seed=0))
    assert len(set(chosen) & set(labelled_indices(labels, 10, data_seed=1))) < 10


def test_the_training_loop_shows_only_the_chosen_labels(tmp_path, small_mnist, monkeypatch):
    seen = []
    step = SelfTraining.train_step

    def spy(self, images, labels, optimizers):
        seen.append((images.clone(), labels.clone()))
        return step(self, images, labels, optimizers)

    monkeypatch.setattr(SelfTraining, "train_step", spy)
    train("pseudo_label", tmp_path, small_mnist, TINY_CNN, threads=1)
    chosen = labelled_indices(small_mnist.train.labels, 2, data_seed=0)
    allowed = {small_mnist.train.images[i].tobytes(): small_mnist.train.labels[i] for i in chosen}
    assert len(seen) == 8  # 512 images / 64
    for images, labels in seen:
        assert len(images) == 64 + 8
        assert (labels[64:] >= 0).all()  # every batch ends with labelled images
        for image, label in zip(images[labels >= 0], labels[labels >= 0]):
            assert allowed[image[0].numpy().tobytes()] == label
    assert load_checkpoint(tmp_path / "checkpoint.pt")["config"]["data_seed"] == 0


def test_the_run_keeps_the_epoch_with_the_lowest_validation_error(tmp_path, small_mnist, monkeypatch):
    errors = iter([0.5, 0.3, 0.4])
    monkeypatch.setattr(SelfTraining, "validate", lambda self, images, labels: {"error": next(errors)})
    train("pseudo_label", tmp_path, small_mnist, {**TINY_CNN, "epochs": 3}, threads=1)
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "checkpoint.pt")
    assert (best["epoch"], last["epoch"]) == (2, 3)
    assert [entry["valid"]["error"] for entry in best["history"]] == [0.5, 0.3]
    assert any(not torch.equal(best["state_dict"][key], value) for key, value in last["state_dict"].items())


def test_m2_unlabelled_cost_enumerated_equals_the_per_class_loop():
    network = M2Network(784, 16, 4, gaussian=False)
    images, noise = torch.rand(5, 784), torch.randn(10, 5, 4)
    torch.testing.assert_close(network.unlabelled_cost(images, noise), network.unlabelled_cost_by_class(images, noise))


def test_m2_unlabelled_cost_is_the_expected_bound_minus_the_entropy():
    network = M2Network(8, 16, 4, gaussian=True)
    x, noise = torch.randn(3, 8), torch.randn(10, 3, 4)
    bounds = torch.stack([network.negative_bound(x, torch.full((3,), c), noise[c]) for c in range(10)], 1)
    q = torch.softmax(network.classifier(x), 1)
    torch.testing.assert_close(network.unlabelled_cost(x, noise), (q * bounds).sum(1) + (q * q.log()).sum(1))


SMALL = {  # (config, steps): M1's classifier waits for its VAE's codes to separate the classes
    "m1": ({"hidden": 64, "latent_dim": 8, "learning_rate": 3e-3}, 300),
    "m2": ({"hidden": 64, "latent_dim": 8, "learning_rate": 3e-3}, 60),
    "pseudo_label": ({"threshold": 0.0, "rampup_steps": 0}, 60),
    "entropy_min": ({"rampup_steps": 0}, 60),
    "fixmatch": ({"threshold": 0.0, "rampup_steps": 0, "ema_decay": 0.9}, 60),  # an average that can follow 60 steps
}


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.slow
def test_training_on_a_tiny_sample_fits_its_labels(name, mnist):
    """Twenty labelled and sixty unlabelled images: the error on the labelled ones falls."""
    torch.manual_seed(0)
    images = torch.from_numpy(mnist.train.images[:80, None])
    labels = torch.from_numpy(mnist.train.labels[:80]).long()
    hidden = torch.cat([labels[:20], torch.full((60,), -1)])
    config, steps = SMALL[name]
    model = build(name, config)
    optimizers = model.optimizers()
    error_before = (model.eval().classify(images[:20]).argmax(1) != labels[:20]).float().mean()
    model.train()
    for _ in range(steps):
        terms = model.train_step(images, hidden, optimizers)
    assert all(np.isfinite(value) for value in terms.values())
    error_after = (model.eval().classify(images[:20]).argmax(1) != labels[:20]).float().mean()
    assert error_after < min(error_before, 0.3)


def test_the_strong_view_erases_one_cutout_square_per_image_or_none(mnist):
    images = torch.from_numpy(mnist.train.images[:32, None])
    torch.manual_seed(0)
    warped = strong_augment(images, 0)
    torch.manual_seed(0)
    cut = strong_augment(images, 8)
    assert warped.sum() > 0.5 * images.sum()  # the affine keeps the digits
    erased = warped != cut
    assert erased.any() and (cut[erased] == 0).all()
    for mask in erased[:, 0]:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        if len(rows):
            assert rows.max() - rows.min() < 8 and cols.max() - cols.min() < 8


def test_fixmatch_with_weight_averaging_trains_the_network_and_serves_the_average(mnist):
    torch.manual_seed(0)
    images = torch.from_numpy(mnist.train.images[:80, None])
    labels = torch.cat([torch.from_numpy(mnist.train.labels[:20]).long(), torch.full((60,), -1)])
    model = build("fixmatch", {"ema_decay": 0.5, "rampup_steps": 0}).train()
    optimizers = model.optimizers()
    assert not any(p is a for p in optimizers["model"].param_groups[0]["params"] for a in model.network_average.parameters())
    before = [p.clone() for p in model.network.parameters()]
    model.train_step(images, labels, optimizers)
    for average, old, new in zip(model.network_average.parameters(), before, model.network.parameters()):
        assert not torch.equal(old, new)
        torch.testing.assert_close(average, (old + new) / 2)  # decay 0.5: halfway from the old weights
    model.eval()
    assert torch.equal(model.classify(images), model.network_average(images)[0])
    assert not torch.equal(model.classify(images), model.network(images)[0])
    graph = model.graphs()["classifier"].module
    assert graph.model is model.network_average  # the exported graph carries the average alone
    torch.testing.assert_close(graph(images)[0], torch.softmax(model.network_average(images)[0], 1))
    assert set(model.validate(images[:20], labels[:20])) == {"error", "live_error"}


def test_m1m2_reads_a_trained_m1_and_keeps_it_frozen(tmp_path, small_mnist):
    m1_path = train("m1", tmp_path / "m1", small_mnist, {"epochs": 1, "hidden": 32, "latent_dim": 4, "labels_per_class": 2}, threads=1)
    overrides = {"epochs": 1, "hidden": 32, "latent_dim": 4, "m1_hidden": 32, "m1_latent_dim": 4,
                 "labels_per_class": 2, "m1_checkpoint": str(m1_path)}
    checkpoint = load_checkpoint(train("m1m2", tmp_path / "m1m2", small_mnist, overrides, threads=1))
    m1 = load_checkpoint(m1_path)["state_dict"]
    for key, value in checkpoint["state_dict"].items():
        if key.startswith("m1."):
            assert torch.equal(value, m1[key.removeprefix("m1.")]), key
    # The units M2 models are those whose mean varies over the training images (sd above 0.1).
    model = load_model(checkpoint)
    means = model.m1.encode(torch.from_numpy(small_mnist.train.images[:, None]))[0]
    assert torch.equal(model.network.observed, (means.std(0) > 0.1).float())
    with pytest.raises(ValueError, match="not an m1"):
        train("m1m2", tmp_path / "wrong", small_mnist, {**overrides, "m1_hidden": 64}, threads=1)
