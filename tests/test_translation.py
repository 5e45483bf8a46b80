"""Translation: the shared building blocks, pix2pix and CycleGAN (training/translation.py), the image
domains (serving/domains.py) and the translation quality measures (serving/quality.py)."""
import json

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from export import exporter
from serving import domains, quality, repository
from training.registry import build
from training.train import load_checkpoint, load_model, train
from training.translation import ImagePool, PatchGAN, ResNetGenerator, UNet, gan_loss


@pytest.mark.parametrize("generator", [UNet(8), ResNetGenerator(8, 2)], ids=["unet", "resnet"])
def test_generators_map_a_digit_to_a_digit_without_transposed_convolutions(generator):
    images = torch.rand(5, 1, 28, 28)
    out = generator.eval()(images)
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in generator.modules())
    # Instance norm: an image's translation does not depend on the rest of its batch.
    torch.testing.assert_close(generator(images[:1]), out[:1], atol=1e-6, rtol=0)


def test_patchgan_scores_a_grid_of_patches_per_image():
    assert PatchGAN(2, 8)(torch.rand(3, 2, 28, 28)).shape == (3, 1, 7, 7)


def test_gan_losses_are_zero_only_where_they_should_be():
    confident = torch.full((4, 1, 7, 7), 1.0)
    assert gan_loss(confident, True, least_squares=True) == 0
    assert gan_loss(confident, False, least_squares=True) == 1
    assert gan_loss(torch.full((4,), 20.0), True, least_squares=False) < 1e-8
    assert gan_loss(torch.zeros(4), False, least_squares=False) == pytest.approx(np.log(2))


def test_image_pool_fills_then_mixes_old_fakes_in():
    torch.manual_seed(0)
    pool = ImagePool(4)
    first = torch.rand(4, 1, 28, 28)
    assert torch.equal(pool(first), first) and int(pool.filled) == 4
    new = torch.rand(64, 1, 28, 28)
    out = pool(new)
    from_pool = [not torch.equal(a, b) for a, b in zip(out, new)]
    assert 10 < sum(from_pool) < 54  # about half the time
    assert {"images", "filled"} <= set(pool.state_dict())  # resumed with the checkpoint


def test_edge_map_is_the_outline_just_outside_the_digit():
    image = np.zeros((28, 28), np.float32)
    image[10:15, 10:15] = 1
    edges = domains.edge_map(image)
    assert edges[10:15, 10:15].sum() == 0  # the digit itself is not an edge
    assert edges[9, 10:15].all() and edges[15, 10:15].all() and edges[10:15, 9].all() and edges[10:15, 15].all()
    assert edges.sum() == 20  # 4-neighbour: no corners
    assert domains.edge_map(np.zeros((2, 1, 28, 28))).sum() == 0


def test_uci_digits_are_framed_like_mnist_and_the_uci_classifier_reads_them():
    uci = domains.load_uci_digits()
    assert uci.train.images.shape == (1297, 28, 28) and uci.test.images.shape == (500, 28, 28)
    outside = np.ones((28, 28), bool)
    outside[4:24, 4:24] = False
    assert uci.train.images[:, outside].max() == 0 and 0 <= uci.train.images.min() and uci.train.images.max() <= 1
    assert (quality.classify_uci(uci.test.images) == uci.test.labels).mean() > 0.97


def test_ssim_and_psnr_rank_copies_above_noise(mnist):
    images = mnist.test.images[:20]
    noisy = np.clip(images + np.random.default_rng(0).normal(0, 0.2, images.shape), 0, 1).astype(np.float32)
    np.testing.assert_allclose(quality.ssim(images, images), 1, atol=1e-9)
    assert (quality.ssim(images, noisy) < 0.9).all()
    assert (quality.psnr(images, noisy) < quality.psnr(images, np.clip(images + 0.01, 0, 1))).all()


def test_a_cyclegan_step_lowers_the_cycle_loss(mnist):
    torch.manual_seed(0)
    model = build("cyclegan", {"channels": 8, "residual_blocks": 1})
    optimizers = model.optimizers()
    images, labels = torch.from_numpy(mnist.train.images[:32, None]), torch.from_numpy(mnist.train.labels[:32])
    uci = torch.from_numpy(domains.load_uci_digits().train.images[:32, None])

    def cycle() -> float:
        with torch.no_grad():
            return model.losses(images, uci)["cycle"].item()

    before = cycle()
    for _ in range(10):
        model.train_step(images, labels, optimizers)
    assert cycle() < 0.9 * before


def test_semantic_consistency_reads_a_trained_lenet_and_keeps_it_frozen(tmp_path, small_mnist):
    lenet_path = train("lenet", tmp_path / "lenet", small_mnist, {"epochs": 1}, threads=1)
    overrides = {"channels": 4, "residual_blocks": 1, "epochs": 1, "semantic_weight": 1.0, "semantic_checkpoint": str(lenet_path)}
    checkpoint = load_checkpoint(train("cyclegan", tmp_path / "cyclegan", small_mnist, overrides, threads=1))
    lenet = load_checkpoint(lenet_path)["state_dict"]
    judged = {key.removeprefix("semantic."): value for key, value in checkpoint["state_dict"].items() if key.startswith("semantic.")}
    assert judged.keys() == lenet.keys() and all(torch.equal(judged[key], lenet[key]) for key in lenet)
    # The term is lower for a translation the judge reads as its source's class than for one it does not.
    model = load_model(checkpoint).eval()
    images = torch.from_numpy(small_mnist.test.images[:200, None])
    with torch.no_grad():
        read = model.semantic.classify(images).argmax(1)
        other = images[(read[None, :] != read[:, None]).int().argmax(1)]  # for each image one read as another class
        assert model._semantic(images, images).item() < model._semantic(images, other).item()
    with pytest.raises(ValueError, match="not a lenet"):
        train("cyclegan", tmp_path / "bad", small_mnist, {**overrides, "semantic_checkpoint": str(tmp_path / "cyclegan" / "checkpoint.pt")}, threads=1)


def test_the_l1_baseline_is_pix2pix_without_a_discriminator():
    baseline = build("pix2pix", {"adversarial": False, "channels": 8})
    assert not hasattr(baseline, "discriminator") and set(baseline.optimizers()) == {"generator"}
    images = torch.from_numpy(np.zeros((4, 1, 28, 28), np.float32))
    assert set(baseline.train_step(images, torch.zeros(4, dtype=torch.long), baseline.optimizers())) == {"l1"}


@pytest.mark.parametrize("name, config, directions", [
    ("pix2pix", {"channels": 4}, ["edges2digit"]),
    ("cyclegan", {"channels": 4, "residual_blocks": 1}, ["mnist2uci", "uci2mnist"]),
])
def test_translators_export_one_graph_per_direction(tmp_path, small_mnist, name, config, directions):
    run = train(name, tmp_path / "run", small_mnist, {**config, "epochs": 1}, threads=1)
    exporter.export_checkpoint(run, tmp_path / "repository", small_mnist)
    entries = repository.read_repository(tmp_path / "repository")
    assert sorted(e.graph for e in entries.values()) == directions
    for entry in entries.values():
        assert entry.capability == "translate"
        assert [(t.name, t.dims) for t in entry.inputs + entry.outputs] == [("image", (1, 28, 28)), ("translated", (1, 28, 28))]
        path = entry.version_path(1)
        session = onnxruntime.InferenceSession(str(path / repository.ONNX_FILE), providers=["CPUExecutionProvider"])
        (translated,) = session.run(["translated"], {"image": small_mnist.test.images[:3, None]})
        assert translated.shape == (3, 1, 28, 28)
        metrics = json.loads((path / repository.CARD_FILE).read_text())["metrics"]
        accuracies = ["class_accuracy"] if name == "pix2pix" else ["mnist2uci_accuracy", "uci2mnist_accuracy"]
        assert all(0 <= metrics[key] <= 1 for key in accuracies)
