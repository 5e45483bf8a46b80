"""One bad directory where a version goes never wedges the gateway: it starts, becomes SERVING, serves the
good versions, lists the bad one with its reason, and still picks up a good version added later."""
import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from latentserve import repository
from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, models_pb2, models_pb2_grpc
from tests.conftest import MODEL_REPOSITORY, RunningGateway, tensor_batch, wait_for

ENTRY = "autoencoder_encoder"  # versions 1 and 2 shipped, the two newest served
IMAGES = tensor_batch(np.zeros((1, 1, 28, 28), np.float32))


def _copy_of(version, name):
    return shutil.copytree(version, version.with_name(name))


def _flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _unparsable_graph(version):
    """An empty model.onnx that the card vouches for: valid on disk, but onnxruntime cannot load it."""
    (version / repository.ONNX_FILE).write_bytes(b"")
    card = json.loads((version / repository.CARD_FILE).read_text())
    (version / repository.CARD_FILE).write_text(json.dumps({**card, "files": repository.checksums(version)}))


def _symlink_outside(version):
    version.symlink_to(shutil.move(version, version.parents[2] / "outside"))  # beside the repository


BREAKAGES = {  # name -> (directory, how it is broken from a copy of version 2, the reason it is listed with)
    "ascii name": ("tmp", lambda v: None, "not a version number"),
    "unicode digit": ("²", lambda v: None, "not a version number"),
    "missing card": ("3", lambda v: (v / repository.CARD_FILE).unlink(), "no card.json"),
    "card without checksums": ("3", lambda v: (v / repository.CARD_FILE).write_text("{}"), "has no checksums"),
    "checksum mismatch": ("3", lambda v: _flip_a_byte(v / repository.ONNX_FILE), "model.onnx does not match its checksum"),
    "half-written": ("3", lambda v: (v / repository.ONNX_FILE).write_bytes(b""), "model.onnx does not match its checksum"),
    "missing graph": ("3", lambda v: (v / repository.ONNX_FILE).unlink(), "model.onnx is missing"),
    "symlink": ("3", _symlink_outside, "a symlink, refused"),
}


def _graph(channel) -> models_pb2.GraphInfo:
    model = models_pb2_grpc.ModelsStub(channel).GetModel(models_pb2.GetModelRequest(name="autoencoder"))
    return next(graph for graph in model.graphs if graph.repository_name == ENTRY)


def _start(start_gateway, tmp_path, directory, breakage) -> tuple[Path, RunningGateway]:
    """A copy of the shipped repository with a copy of ENTRY's version 2 broken, and a gateway over it."""
    repo = tmp_path / "repository"
    shutil.copytree(MODEL_REPOSITORY, repo, ignore=shutil.ignore_patterns("__pycache__"))
    breakage(_copy_of(repo / ENTRY / "2", directory))
    return repo, start_gateway(model_repository=repo, data_dir=tmp_path / "data", gallery="none", health_poll_seconds=0.2)


def _wait_serving(channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    wait_for(lambda: health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING)


def _served(channel, version: int = 0) -> int:
    request = encoder_pb2.EncodeRequest(model=common_pb2.ModelRef(version=version), images=IMAGES)
    return encoder_pb2_grpc.EncoderStub(channel).Encode(request).model.version


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_a_bad_version_directory_is_skipped_and_reported(start_gateway, tmp_path, case):
    directory, breakage, reason = BREAKAGES[case]
    repo, gateway = _start(start_gateway, tmp_path, directory, breakage)
    with gateway.channel() as channel:
        _wait_serving(channel)
        served = functools.partial(_served, channel)
        assert (served(), served(1)) == (2, 1)  # the policy (latest 2) chooses among the valid versions
        graph = _graph(channel)
        assert [v.version for v in graph.versions] == [2, 1]
        assert [s.directory for s in graph.skipped_versions] == [directory]
        assert reason in graph.skipped_versions[0].reason

        added = max(repository.available_versions(repo / ENTRY)) + 1
        _copy_of(repo / ENTRY / "2", str(added))
        wait_for(lambda: served() == added)
        graph = _graph(channel)
        assert [v.version for v in graph.versions] == [added, 2]
        assert [s.directory for s in graph.skipped_versions] == [directory]


def test_a_valid_version_that_fails_to_load_keeps_its_place_in_the_policy_like_in_triton(start_gateway, tmp_path):
    _, gateway = _start(start_gateway, tmp_path, "3", _unparsable_graph)
    with gateway.channel() as channel:
        _wait_serving(channel)
        assert _served(channel) == 2
        graph = _graph(channel)
        assert [v.version for v in graph.versions] == [2]
        assert [s.directory for s in graph.skipped_versions] == ["3"]
        assert graph.skipped_versions[0].reason.startswith("failed to load: ")
