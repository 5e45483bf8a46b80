"""Translation: the shared building blocks, pix2pix and CycleGAN (training/translation.py), the image
domains (latentserve/datasets.py) and the translation quality measures (latentserve/quality.py)."""
import copy
import json

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from export import exporter
from latentserve import datasets, quality, repository
from training.registry import build
from training.train import train
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
    edges = datasets.edge_map(image)
    assert edges[10:15, 10:15].sum() == 0  # the digit itself is not an edge
    assert edges[9, 10:15].all() and edges[15, 10:15].all() and edges[10:15, 9].all() and edges[10:15, 15].all()
    assert edges.sum() == 20  # 4-neighbour: no corners
    assert datasets.edge_map(np.zeros((2, 1, 28, 28))).sum() == 0


def test_uci_digits_are_framed_like_mnist_and_the_uci_classifier_reads_them():
    uci = datasets.load_uci_digits()
    assert uci.train.images.shape == (1297, 28, 28) and uci.test.images.shape == (500, 28, 28)
    outside = np.ones((28, 28), bool)
    outside[4:24, 4:24] = False
    assert uci.train.images[:, outside].max() == 0 and 0 <= uci.train.images.min() and uci.train.images.max() <= 1
    assert (quality.classify_uci(uci.test.images) == uci.test.labels).mean() > 0.97


def test_scans_are_the_central_box_resized_to_8x8_as_pil_does(mnist):
    images = mnist.test.images[:20]
    resized = [Image.fromarray(image[4:24, 4:24], mode="F").resize((8, 8), Image.Resampling.BOX) for image in images]
    expected = np.stack([np.asarray(scan) for scan in resized]).reshape(20, 64) * 16
    np.testing.assert_allclose(datasets.to_scans(images), expected, atol=1e-5)


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
    uci_train = datasets.load_uci_digits().train
    uci, uci_labels = torch.from_numpy(uci_train.images[:32, None]), torch.from_numpy(uci_train.labels[:32])

    def cycle() -> float:
        with torch.no_grad():
            return model.losses(images, labels, uci, uci_labels)["cycle"].item()

    before = cycle()
    for _ in range(10):
        model.train_step(images, labels, optimizers)
    assert cycle() < 0.9 * before


@pytest.mark.slow
def test_semantic_consistency_fits_a_frozen_scan_reader_per_domain(small_mnist):
    torch.manual_seed(0)
    model = build("cyclegan", {"channels": 4, "residual_blocks": 1, "semantic_weight": 1.0})
    train_images, train_labels = torch.from_numpy(small_mnist.train.images[:, None]), torch.from_numpy(small_mnist.train.labels).long()
    model.initialise(train_images, train_labels)
    uci, mnist = datasets.load_uci_digits().test, small_mnist.test
    with torch.no_grad():  # each reads held-out digits of its own domain (the MNIST one fitted on 512)
        assert (model.uci_reader(torch.from_numpy(uci.images[:, None])).argmax(1).numpy() == uci.labels).mean() > 0.95
        assert (model.mnist_reader(torch.from_numpy(mnist.images[:1000, None])).argmax(1).numpy() == mnist.labels[:1000]).mean() > 0.8
    readers = copy.deepcopy([model.uci_reader.state_dict(), model.mnist_reader.state_dict()])
    optimizers = model.optimizers()
    before = {name: p.clone() for name, p in model.mnist2uci.named_parameters()}
    terms = [model.train_step(train_images[:32], train_labels[:32], optimizers) for _ in range(2)]
    assert all(term["semantic"] > 0 for term in terms)
    assert any(not torch.equal(p, before[name]) for name, p in model.mnist2uci.named_parameters())
    for reader, old in zip([model.uci_reader, model.mnist_reader], readers):
        assert all(torch.equal(value, old[key]) for key, value in reader.state_dict().items())  # frozen
    # A translator's gradient reaches it through the reader: the term depends on the translation.
    image = train_images[:4].clone().requires_grad_(True)
    F.cross_entropy(model.uci_reader(image), train_labels[:4]).backward()
    assert image.grad.abs().sum() > 0 and all(p.grad is None for p in model.uci_reader.parameters())


def test_the_l1_baseline_is_pix2pix_without_a_discriminator():
    baseline = build("pix2pix", {"adversarial": False, "channels": 8})
    assert not hasattr(baseline, "discriminator") and set(baseline.optimizers()) == {"generator"}
    images = torch.from_numpy(np.zeros((4, 1, 28, 28), np.float32))
    assert set(baseline.train_step(images, torch.zeros(4, dtype=torch.long), baseline.optimizers())) == {"l1"}


@pytest.mark.parametrize("name, config, directions", [
    ("pix2pix", {"channels": 4}, ["edges2digit"]),
    ("cyclegan", {"channels": 4, "residual_blocks": 1}, ["mnist2uci", "uci2mnist"]),
])
@pytest.mark.slow
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
