"""Bearer tokens, scopes, quotas and the audit log (serving/auth.py, serving/tokens.py), over real gRPC on
loopback, with tokens made by `latentserve token` and serving.tokens."""
import importlib
import json
import logging
import pkgutil
import stat
import subprocess
import sys
import time
from datetime import datetime, timezone

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from tritonclient.grpc import service_pb2

import latentserve.v1
from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, generator_pb2, generator_pb2_grpc, models_pb2, models_pb2_grpc
from latentserve.v1 import search_pb2, search_pb2_grpc
from serving import tokens
from serving.auth import NO_VALID_TOKEN, RULES, Guard
from serving.errors import PermissionDenied
from serving.settings import Settings
from tests.conftest import Records, RunningGateway, tensor_batch

MADE: list[str] = []  # every token made in this module: none may ever appear in a log record


def new_token(path, name: str, scopes: list[str], **quotas) -> str:
    token = tokens.create(path, name, scopes, **quotas)
    MADE.append(token)
    return token


@pytest.fixture(scope="module", autouse=True)
def records():
    handler, root = Records(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture(autouse=True)
def no_token_is_logged(records):
    """After each test (and the gateway's start before the first): no token, nor its hash, in any record so far."""
    yield
    for token in MADE:
        for secret in (token, tokens.hash_token(token)[:8]):
            assert not any(secret in line for line in records.lines)


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory):
    return tmp_path_factory.mktemp("tokens") / "tokens.json"


@pytest.fixture(scope="module")
def reader(tokens_file) -> str:
    return new_token(tokens_file, "reader", ["read"])


@pytest.fixture(scope="module")
def writer(tokens_file) -> str:
    return new_token(tokens_file, "writer", ["read", "write"])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, tokens_file, reader, writer):
    running = RunningGateway(data_dir=tmp_path_factory.mktemp("data"), gallery="none", tokens_file=tokens_file).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def channel(gateway):
    with gateway.channel() as channel:
        yield channel


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def refused(call, code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    assert raised.value.code() == code, raised.value.details()
    return raised.value


def retry_delay(error: grpc.RpcError) -> float:
    (detail,) = rpc_status.from_call(error).details
    info = error_details_pb2.RetryInfo()
    assert detail.Unpack(info)
    return info.retry_delay.ToTimedelta().total_seconds()


def items(*ids: str) -> search_pb2.AddItemsRequest:
    images = np.random.default_rng(0).random((len(ids), 28, 28), np.float32)
    return search_pb2.AddItemsRequest(items=[
        search_pb2.Item(id=item, image=common_pb2.Image(tensor=tensor_batch(image[None]).tensor)) for item, image in zip(ids, images)
    ])


def stored(channel, token: str) -> int:
    return search_pb2_grpc.SearchStub(channel).GetIndexStats(search_pb2.GetIndexStatsRequest(), metadata=bearer(token)).items


def encode(channel, token: str, count: int):
    request = encoder_pb2.EncodeRequest(images=tensor_batch(np.zeros((count, 28, 28), np.float32)))
    return encoder_pb2_grpc.EncoderStub(channel).Encode(request, metadata=bearer(token))


def test_every_latentserve_method_has_a_rule():
    """The table is the API, from the proto descriptors (ours and the Open Inference Protocol's): a method
    missing from it would be refused (fail closed); and each of ours takes one request message, which the
    interceptor checks before it runs (the protocol's one streaming method is answered UNIMPLEMENTED unread)."""
    methods = set()
    for module in pkgutil.iter_modules(latentserve.v1.__path__):
        if module.name.endswith("_pb2"):
            for service in importlib.import_module(f"latentserve.v1.{module.name}").DESCRIPTOR.services_by_name.values():
                for method in service.methods:
                    assert not method.client_streaming, method.full_name
                    methods.add(f"/{service.full_name}/{method.name}")
    protocol = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    methods |= {f"/{protocol.full_name}/{method.name}" for method in protocol.methods}
    assert methods == set(RULES)
    for name in ("/latentserve.v1.Search/AddItems", "/latentserve.v1.Search/DeleteItems"):
        assert RULES[name].scope == "write"


def test_a_method_missing_from_the_table_is_refused_even_without_tokens():
    with pytest.raises(PermissionDenied):
        Guard(Settings()).authorize("/latentserve.v1.Models/Unlisted", None, models_pb2.ListModelsRequest())


def test_a_missing_or_malformed_tokens_file_stops_the_start(tmp_path):
    with pytest.raises(tokens.TokenError, match="No such file"):
        Guard(Settings(tokens_file=tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text('{"tokens": [{"name": "x"}]}')
    with pytest.raises(tokens.TokenError, match="malformed"):
        Guard(Settings(tokens_file=tmp_path / "bad.json"))


def test_no_token_a_wrong_one_and_a_revoked_one_are_refused_alike(channel, tokens_file):
    stub = models_pb2_grpc.ModelsStub(channel)
    request = models_pb2.ListModelsRequest()
    for metadata in ([], bearer("not-a-token"), [("authorization", "not bearer")]):
        error = refused(lambda: stub.ListModels(request, metadata=metadata), grpc.StatusCode.UNAUTHENTICATED)
        assert error.details() == NO_VALID_TOKEN
    token = new_token(tokens_file, "short-lived", ["read"])  # the running gateway reads the changed file
    assert stub.ListModels(request, metadata=bearer(token)).models
    tokens.revoke(tokens_file, "short-lived")
    error = refused(lambda: stub.ListModels(request, metadata=bearer(token)), grpc.StatusCode.UNAUTHENTICATED)
    assert error.details() == NO_VALID_TOKEN


def test_a_token_without_the_scope_changes_nothing(channel, tokens_file, reader, writer):
    stub = search_pb2_grpc.SearchStub(channel)
    stub.AddItems(items("kept"), metadata=bearer(writer))
    before = stored(channel, reader)
    error = refused(lambda: stub.AddItems(items("added"), metadata=bearer(reader)), grpc.StatusCode.PERMISSION_DENIED)
    assert "'write'" in error.details()
    refused(lambda: stub.DeleteItems(search_pb2.DeleteItemsRequest(ids=["kept"]), metadata=bearer(reader)), grpc.StatusCode.PERMISSION_DENIED)
    assert stored(channel, reader) == before
    write_only = new_token(tokens_file, "ingest", ["write"])  # scopes are independent: write does not imply read
    error = refused(lambda: stored(channel, write_only), grpc.StatusCode.PERMISSION_DENIED)
    assert "'read'" in error.details()


def test_a_write_token_adds_and_deletes(channel, writer):
    stub = search_pb2_grpc.SearchStub(channel)
    before = stored(channel, writer)
    assert stub.AddItems(items("a", "b"), metadata=bearer(writer)).added == 2
    assert stored(channel, writer) == before + 2
    assert stub.DeleteItems(search_pb2.DeleteItemsRequest(ids=["a", "b"]), metadata=bearer(writer)).deleted == 2
    assert stored(channel, writer) == before


def test_health_and_reflection_need_no_token(channel):
    check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="latentserve.v1.Search"))
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    (response,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    assert "latentserve.v1.Search" in {service.name for service in response.list_services_response.service}


def test_over_the_request_quota_is_refused_with_when_to_retry(channel, tokens_file):
    token = new_token(tokens_file, "slow", ["read"], requests_per_second=2)
    stub = models_pb2_grpc.ModelsStub(channel)
    call = lambda: stub.ListModels(models_pb2.ListModelsRequest(), metadata=bearer(token))  # noqa: E731
    call(), call()  # the burst: one second's worth
    error = refused(call, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert "2 read requests a second" in error.details()
    delay = retry_delay(error)
    assert 0 < delay <= 0.5
    time.sleep(delay)
    assert call().models


def test_the_images_quota_counts_images(channel, tokens_file):
    token = new_token(tokens_file, "painter", ["read"], images_per_second=10)
    assert len(encode(channel, token, 8).codes.shape)
    error = refused(lambda: encode(channel, token, 4), grpc.StatusCode.RESOURCE_EXHAUSTED)  # 2 left, 4 asked
    assert "10 images a second" in error.details()
    assert 0.15 < retry_delay(error) <= 0.25
    models_pb2_grpc.ModelsStub(channel).ListModels(models_pb2.ListModelsRequest(), metadata=bearer(token))  # no images: served
    time.sleep(1)
    # more than a second's worth goes through on a full bucket and leaves a debt the next calls wait out
    generate = generator_pb2.GenerateRequest(count=25, sampling=generator_pb2.Sampling(seed=1))
    assert generator_pb2_grpc.GeneratorStub(channel).Generate(generate, metadata=bearer(token)).images.shape[0] == 25
    assert 1 < retry_delay(refused(lambda: encode(channel, token, 1), grpc.StatusCode.RESOURCE_EXHAUSTED)) <= 1.6


def test_every_write_is_audited_with_the_token_name(channel, reader, writer, caplog, records):
    caplog.set_level(logging.INFO, logger="latentserve.audit")
    stub = search_pb2_grpc.SearchStub(channel)
    stub.AddItems(items("x", "y"), metadata=bearer(writer))
    stored(channel, writer)  # a read: not audited
    stub.DeleteItems(search_pb2.DeleteItemsRequest(ids=["x", "y"]), metadata=bearer(writer))
    refused(lambda: stub.DeleteItems(search_pb2.DeleteItemsRequest(ids=["z"]), metadata=bearer(reader)), grpc.StatusCode.PERMISSION_DENIED)
    refused(lambda: stub.DeleteItems(search_pb2.DeleteItemsRequest(ids=["z"])), grpc.StatusCode.UNAUTHENTICATED)
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "latentserve.audit"]
    assert [(line["token"], line["rpc"], line["items"], line["status"]) for line in lines] == [
        ("writer", "/latentserve.v1.Search/AddItems", 2, "OK"),
        ("writer", "/latentserve.v1.Search/DeleteItems", 2, "OK"),
        ("reader", "/latentserve.v1.Search/DeleteItems", 1, "PERMISSION_DENIED"),
        ("-", "/latentserve.v1.Search/DeleteItems", 1, "UNAUTHENTICATED"),
    ]
    for line in lines:
        assert datetime.fromisoformat(line["time"]).utcoffset() == timezone.utc.utcoffset(None)
        assert set(line) == {"time", "token", "rpc", "items", "status"}
    assert any('"token": "writer"' in line for line in records.lines)  # the log check sees the gateway's records


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentserve.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("verb", [["token"], ["token", "create"], ["token", "list"], ["token", "revoke"]])
def test_every_token_verb_has_help(verb):
    result = cli(*verb, "--help")
    assert result.returncode == 0 and "usage: latentserve" in result.stdout


def test_token_commands_keep_only_hashes_in_a_private_file(tmp_path):
    path = tmp_path / "tokens.json"
    created = cli("token", "create", "--tokens-file", str(path), "--name", "ci", "--scopes", "read,write", "--images-per-second", "50")
    assert created.returncode == 0, created.stderr
    token = created.stdout.splitlines()[-1]
    MADE.append(token)
    assert len(token) >= 43  # 256 random bits, URL-safe base64
    text = path.read_text()
    assert token not in text and tokens.hash_token(token) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (saved,) = tokens.read_tokens(path)
    assert (saved.name, saved.scopes, saved.images_per_second, saved.requests_per_second) == ("ci", ("read", "write"), 50, None)
    listed = cli("token", "list", "--tokens-file", str(path), "--json")
    assert json.loads(listed.stdout)["name"] == "ci" and tokens.hash_token(token) not in listed.stdout
    duplicate = cli("token", "create", "--tokens-file", str(path), "--name", "ci", "--scopes", "read")
    unknown_scope = cli("token", "create", "--tokens-file", str(path), "--name", "x", "--scopes", "read,root")
    for result in (duplicate, unknown_scope):
        assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert cli("token", "revoke", "--tokens-file", str(path), "--name", "ci").returncode == 0
    assert tokens.read_tokens(path) == []
    assert cli("token", "revoke", "--tokens-file", str(path), "--name", "ci").returncode == 2


def test_cli_client_verbs_send_the_token(gateway, reader, writer, tmp_path, capsys, monkeypatch):
    from latentserve.cli import main

    assert main(["models", "--target", gateway.target]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert main(["index", "stats", "--target", gateway.target, "--token", reader, "--json"]) == 0
    assert "items" in json.loads(capsys.readouterr().out)
    monkeypatch.setenv("LATENTSERVE_TOKEN", writer)
    assert main(["models", "--target", gateway.target, "--json"]) == 0
    capsys.readouterr()
    # the batch job's stream carries it too
    assert main(["generate", "--target", gateway.target, "--model", "acgan", "--count", "3", "--out", str(tmp_path / "job")]) == 0
    assert len(list((tmp_path / "job" / "images").iterdir())) == 3


def test_a_new_token_never_starts_with_a_dash(tmp_path, monkeypatch):
    drawn = iter(["-looks-like-an-option", "a-token"])
    monkeypatch.setattr(tokens.secrets, "token_urlsafe", lambda size: next(drawn))
    assert tokens.create(tmp_path / "tokens.json", "ci", ["read"]) == "a-token"
