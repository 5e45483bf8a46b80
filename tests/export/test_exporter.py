"""Export: versions written atomically, parity checked, Triton configs that parse, model cards."""
import json

import numpy as np
import onnxruntime
import pytest
import torch

from export import exporter
from latentserve import repository
from training.train import checkpoint_from_version, load_checkpoint, load_model, train

pytestmark = pytest.mark.slow  # every test exports ONNX and TorchScript graphs

TINY = {"channels": 8, "code_dim": 8, "hash_bits": 16, "epochs": 1}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, small_mnist):
    return train("autoencoder", tmp_path_factory.mktemp("run"), small_mnist, TINY, threads=1)


def test_export_writes_a_servable_version_with_parity(tmp_path, checkpoint, small_mnist):
    (version_dir,) = exporter.export_checkpoint(checkpoint, tmp_path, small_mnist)
    assert version_dir == tmp_path / "autoencoder_encoder" / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == ["card.json", "model.onnx", "model.pt", "model.py"]

    entry = repository.read_repository(tmp_path)["autoencoder_encoder"]
    assert (entry.model, entry.graph, entry.capability, entry.versions) == ("autoencoder", "encoder", "encode", (1,))
    assert [(t.name, t.dims) for t in entry.outputs] == [("code", (8,)), ("binary_code", (16,))]

    images = small_mnist.test.images[:5, None]
    session = onnxruntime.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    code, bits = session.run(["code", "binary_code"], {"image": images})
    model = load_model(load_checkpoint(checkpoint))
    with torch.no_grad():
        want_code, want_bits = model.graphs()["encoder"].module(torch.from_numpy(images))
    np.testing.assert_allclose(code, want_code.numpy(), atol=exporter.FLOAT_TOLERANCE)
    np.testing.assert_array_equal(bits, want_bits.numpy())

    card = json.loads((version_dir / "card.json").read_text())
    assert card["data"]["sha256"] == small_mnist.sha256
    assert card["config"]["code_dim"] == 8
    assert 0 < card["metrics"]["retrieval_code_map"] <= 1
    assert card["parity"]["real"]["onnx.code"] <= exporter.FLOAT_TOLERANCE
    assert card["source_commit"]
    assert card["files"] == repository.checksums(version_dir) and set(card["files"]) == {"model.onnx", "model.pt", "model.py"}
    assert repository.read_card(version_dir) == card


def test_native_config_uses_the_onnxruntime_backend(tmp_path, checkpoint, small_mnist):
    exporter.export_checkpoint(checkpoint, tmp_path, small_mnist)
    native = repository.read_config(tmp_path / "autoencoder_encoder" / repository.NATIVE_CONFIG_FILE)
    python = repository.read_config(tmp_path / "autoencoder_encoder" / repository.CONFIG_FILE)
    assert native.platform == "onnxruntime_onnx" and not native.backend
    assert python.backend == "python"
    assert list(native.input) == list(python.input) and list(native.output) == list(python.output)


def test_each_export_adds_the_next_version_and_the_policy_keeps_two(tmp_path, checkpoint, small_mnist):
    for _ in range(3):
        exporter.export_checkpoint(checkpoint, tmp_path, small_mnist)
    entry_dir = tmp_path / "autoencoder_encoder"
    assert repository.available_versions(entry_dir) == [1, 2, 3]
    assert repository.read_entry(entry_dir).versions == (3, 2)
    assert not [p for p in entry_dir.iterdir() if p.name.startswith(".staging")]


def test_parity_failure_fails_the_export_and_writes_nothing(tmp_path, checkpoint, small_mnist, monkeypatch):
    monkeypatch.setattr(exporter, "FLOAT_TOLERANCE", 0.0)  # onnxruntime and torch differ by ~1e-6
    with pytest.raises(exporter.ParityError, match="max difference"):
        exporter.export_checkpoint(checkpoint, tmp_path, small_mnist)
    assert repository.available_versions(tmp_path / "autoencoder_encoder") == []
    assert not list((tmp_path / "autoencoder_encoder").glob(".staging*"))


def test_export_refuses_a_checkpoint_trained_on_other_data(tmp_path, checkpoint, small_mnist):
    from dataclasses import replace

    with pytest.raises(ValueError, match="trained on data"):
        exporter.export_checkpoint(checkpoint, tmp_path, replace(small_mnist, sha256="other"))


@pytest.mark.parametrize("name, config", [
    ("m1", {"hidden": 32, "latent_dim": 4}),
    ("m2", {"hidden": 32, "latent_dim": 4}),
    ("fixmatch", {"batch_size": 128, "labelled_batch_size": 16}),
    ("ssgan", {"batch_size": 128, "labelled_batch_size": 16, "discriminator_layers": (32, 16), "generator_layers": (32,)}),
])
def test_semi_supervised_models_export_a_classifier_graph(tmp_path, small_mnist, name, config):
    run = train(name, tmp_path / "run", small_mnist, {**config, "epochs": 1, "labels_per_class": 2}, threads=1)
    written = exporter.export_checkpoint(run, tmp_path / "repository", small_mnist)  # m2 also writes its generator and encoder
    (version_dir,) = [d for d in written if d.parent.name == f"{name}_classifier"]
    entry = repository.read_repository(tmp_path / "repository")[f"{name}_classifier"]
    assert (entry.capability, [(t.name, t.dims) for t in entry.outputs]) == ("classify", [("probabilities", (10,))])
    session = onnxruntime.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"image": small_mnist.test.images[:8, None]})
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    card = json.loads((version_dir / "card.json").read_text())
    assert 0 <= card["metrics"]["test_error"] <= 1 and card["config"]["labels_per_class"] == 2
    # The served files hold the classifier's weights only, not the generative parts it does not use: the
    # frozen TorchScript file is about the size of the ONNX file, which holds what the graph computes
    assert (version_dir / "model.pt").stat().st_size < 1.5 * (version_dir / "model.onnx").stat().st_size


@pytest.mark.parametrize("tricks", [{}, {"generator_norm": "pixel", "minibatch_stddev": True}])
def test_a_generator_with_a_latent_code_exports_with_parity(tmp_path, small_mnist, tricks):
    config = {"channels": 8, "latent_dim": 12, "refine_channels": 4, "categories": 10, "epochs": 1, **tricks}
    run = train("dcgan", tmp_path / "run", small_mnist, config, threads=1)
    (version_dir,) = exporter.export_checkpoint(run, tmp_path / "repository", small_mnist)
    entry = repository.read_repository(tmp_path / "repository")["dcgan_generator"]
    assert [(t.name, t.dims) for t in entry.inputs] == [("latent", (12,))]  # the code is read from the latent
    card = json.loads((version_dir / "card.json").read_text())
    assert max(card["parity"]["real"].values()) <= exporter.FLOAT_TOLERANCE
    # diversity and realism apart, each beside its real-data value
    for name in ("ms_ssim", "swd_28", "swd_14", "swd_7"):
        assert card["metrics"][name] >= 0 and card["metrics"][f"real_{name}"] >= 0, name
    assert 0 <= card["metrics"]["nearer_than_real_1st_percentile"] <= 1


def test_a_run_starts_again_from_an_exported_version(tmp_path, small_mnist):
    config = {"channels": 4, "features": 16, "epochs": 1}
    trained = load_checkpoint(train("lenet", tmp_path / "run", small_mnist, config, threads=1))
    (version_dir,) = exporter.export_checkpoint(tmp_path / "run" / "checkpoint.pt", tmp_path / "repository", small_mnist)
    started = load_checkpoint(checkpoint_from_version(version_dir, tmp_path / "again"))
    assert (started["epoch"], started["step"], started["history"]) == (trained["epoch"], trained["step"], trained["history"])
    assert started["state_dict"].keys() == trained["state_dict"].keys()
    for key, value in trained["state_dict"].items():
        torch.testing.assert_close(started["state_dict"][key], value, rtol=0, atol=0, msg=key)
    resumed = load_checkpoint(train("lenet", tmp_path / "again", small_mnist, {"epochs": 2}, threads=1))
    assert [entry["epoch"] for entry in resumed["history"]] == [1, 2]
    with pytest.raises(FileExistsError):  # never over a run's own checkpoint
        checkpoint_from_version(version_dir, tmp_path / "again")


def test_a_version_whose_graph_lacks_part_of_the_model_cannot_start_a_run(tmp_path, checkpoint, small_mnist):
    (version_dir,) = exporter.export_checkpoint(checkpoint, tmp_path / "repository", small_mnist)
    with pytest.raises(ValueError, match="lacks"):  # the encoder graph holds no decoder
        checkpoint_from_version(version_dir, tmp_path / "again")
