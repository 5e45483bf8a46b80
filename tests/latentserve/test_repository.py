"""Reading the model repository: Triton's version policies, which directories are valid versions."""
import hashlib
import json
import shutil

from tritonclient.grpc import model_config_pb2

from latentserve.repository import (
    CARD_FILE, CONFIG_FILE, available_versions, checksums, is_version_name, read_card, read_entry, read_repository,
    select_versions,
)
from tests.conftest import MODEL_REPOSITORY

AVAILABLE = [1, 2, 3, 5]


def _policy(**kind) -> model_config_pb2.ModelConfig:
    return model_config_pb2.ModelConfig(version_policy=model_config_pb2.ModelVersionPolicy(**kind))


def test_version_policies_select_like_triton():
    Policy = model_config_pb2.ModelVersionPolicy
    assert select_versions(model_config_pb2.ModelConfig(), AVAILABLE) == (5,)  # default: latest 1
    assert select_versions(_policy(latest=Policy.Latest(num_versions=2)), AVAILABLE) == (5, 3)
    assert select_versions(_policy(all=Policy.All()), AVAILABLE) == (5, 3, 2, 1)
    assert select_versions(_policy(specific=Policy.Specific(versions=[2, 4])), AVAILABLE) == (2,)


def test_a_version_is_named_by_its_number_in_ascii_digits():
    assert all(is_version_name(name) for name in ("0", "1", "12"))
    assert not any(is_version_name(name) for name in ("tmp", "²", "٣", "1²", "007", "-1", "1.0", " 1", ""))


def _version(path, files: dict[str, bytes]):
    path.mkdir()
    for name, content in files.items():
        (path / name).write_bytes(content)
    (path / CARD_FILE).write_text(json.dumps({"files": checksums(path)}))
    return path


def test_checksums_cover_every_file_but_the_card(tmp_path):
    version = _version(tmp_path / "1", {"model.onnx": b"graph", "model.py": b"code"})
    assert checksums(version) == {"model.onnx": hashlib.sha256(b"graph").hexdigest(), "model.py": hashlib.sha256(b"code").hexdigest()}
    assert read_card(version)["files"] == checksums(version)


def test_invalid_versions_are_skipped_with_reasons_and_the_policy_chooses_among_the_rest(tmp_path):
    entry = tmp_path / "autoencoder_encoder"
    entry.mkdir()
    shutil.copyfile(MODEL_REPOSITORY / "autoencoder_encoder" / CONFIG_FILE, entry / CONFIG_FILE)  # latest 2
    (entry / "configs").mkdir()
    files = {"model.onnx": b"graph", "model.py": b"code"}
    for name in ("1", "2", "3", "4", "5", "6", "tmp", "²", "007", ".staging-x"):
        _version(entry / name, files)
    (entry / "3" / "model.onnx").write_bytes(b"grapH")  # a flipped byte
    (entry / "4" / CARD_FILE).unlink()
    (entry / "5" / CARD_FILE).write_text(json.dumps({"model": "autoencoder"}))
    (entry / "6" / "model.py").unlink()
    (entry / "7").symlink_to(entry / "2")
    (entry / "8").symlink_to(entry / "2" / "model.onnx")  # not a directory: not in a version's place at all

    read = read_entry(entry)
    assert (read.versions, sorted(read.cards)) == ((2, 1), [1, 2])
    assert read.skipped == {
        "3": "model.onnx does not match its checksum in card.json",
        "4": "no card.json",
        "5": "card.json has no checksums (files)",
        "6": "model.py is missing",
        "7": "a symlink, refused: it could point outside the repository",
        **{name: "the name is not a version number (ASCII digits, no leading zero)" for name in ("tmp", "²", "007")},
    }
    assert available_versions(entry) == [1, 2, 3, 4, 5, 6, 7]  # valid or not: the exporter numbers past them


def test_every_shipped_version_is_valid():
    assert {name: entry.skipped for name, entry in read_repository(MODEL_REPOSITORY).items() if entry.skipped} == {}
