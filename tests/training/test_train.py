"""The training loop: checkpoints, resume, progress grid, data checksum."""
from dataclasses import replace

import pytest
import torch
from PIL import Image

from training.train import load_checkpoint, train

TINY = {"channels": 8, "code_dim": 8, "hash_bits": 16, "batch_size": 128}


def test_checkpoint_holds_what_resuming_needs(tmp_path, small_mnist):
    path = train("autoencoder", tmp_path, small_mnist, {**TINY, "epochs": 1}, threads=1)
    checkpoint = load_checkpoint(path)
    assert checkpoint["model"] == "autoencoder"
    assert checkpoint["epoch"] == 1 and checkpoint["step"] == 4  # 512 images / 128
    assert checkpoint["config"]["code_dim"] == 8
    assert checkpoint["data_sha256"] == small_mnist.sha256
    assert checkpoint["optimizers"]["model"]["state"]
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size[0] > 16 * 28 and grid.size[1] > 3 * 28  # 16 columns, 3 rows


def test_resume_continues_where_it_stopped_and_matches_an_uninterrupted_run(tmp_path, small_mnist):
    train("autoencoder", tmp_path / "split", small_mnist, {**TINY, "epochs": 1}, threads=1)
    resumed = load_checkpoint(train("autoencoder", tmp_path / "split", small_mnist, {"epochs": 2}, threads=1))
    straight = load_checkpoint(train("autoencoder", tmp_path / "straight", small_mnist, {**TINY, "epochs": 2}, threads=1))
    assert resumed["step"] == straight["step"] == 8
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    for key, value in straight["state_dict"].items():
        assert torch.allclose(value.float(), resumed["state_dict"][key].float(), atol=1e-5), key


def test_resume_refuses_a_changed_config_or_other_data(tmp_path, small_mnist):
    train("autoencoder", tmp_path, small_mnist, {**TINY, "epochs": 1}, threads=1)
    with pytest.raises(ValueError, match="only `epochs`"):
        train("autoencoder", tmp_path, small_mnist, {"code_dim": 4}, threads=1)
    with pytest.raises(ValueError, match="trained on data"):
        train("autoencoder", tmp_path, replace(small_mnist, sha256="other"), {}, threads=1)


def test_learning_rate_decays_per_epoch_and_survives_resume(tmp_path, small_mnist):
    train("autoencoder", tmp_path, small_mnist, {**TINY, "epochs": 1, "learning_rate_decay": 0.5}, threads=1)
    checkpoint = load_checkpoint(train("autoencoder", tmp_path, small_mnist, {"epochs": 3}, threads=1))
    assert checkpoint["optimizers"]["model"]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5**2)


@pytest.mark.slow
def test_each_optimizer_decays_from_its_own_rate_across_a_resume(tmp_path, small_mnist):
    config = {"channels": 8, "latent_dim": 12, "batch_size": 128, "learning_rate": 1e-4, "discriminator_learning_rate": 4e-4}
    train("wgan_gp", tmp_path, small_mnist, {**config, "epochs": 1, "learning_rate_decay": 0.5}, threads=1)
    optimizers = load_checkpoint(train("wgan_gp", tmp_path, small_mnist, {"epochs": 2}, threads=1))["optimizers"]
    assert optimizers["generator"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * 0.5)
    assert optimizers["discriminator"]["param_groups"][0]["lr"] == pytest.approx(4e-4 * 0.5)
