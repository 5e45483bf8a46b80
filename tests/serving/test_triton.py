"""Triton Inference Server for real: the wheel's tritonserver over our model repository, and the gateway on it."""
import asyncio
import shutil
import threading
import time

import grpc
import numpy as np
import onnxruntime
import pytest
import tritonclient.grpc as triton_client
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from benchmarks.certificates import CertificateAuthority
from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc, generator_pb2, generator_pb2_grpc
from latentserve import repository
from serving.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable
from serving.runtime.triton import TritonRuntime, _error
from serving.triton_server import SHM, TritonServer, TritonStartError, free_ports
from tests.conftest import MODEL_REPOSITORY, tensor_batch, wait_for

pytestmark = [pytest.mark.triton, pytest.mark.slow]  # each starts tritonserver


ENTRIES = repository.read_repository(MODEL_REPOSITORY)


def onnx_codes(entry_name: str, images: np.ndarray) -> np.ndarray:
    """Codes from the newest version: what Triton runs when no version is asked for."""
    entry = ENTRIES[entry_name]
    path = entry.version_path(entry.versions[0]) / repository.ONNX_FILE
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["code"], {"image": images})[0]


@pytest.fixture(scope="module")
def triton():
    with TritonServer(MODEL_REPOSITORY) as server:
        yield server


def test_triton_serves_every_entry_like_onnxruntime(triton):
    client = triton_client.InferenceServerClient(triton.grpc_url)
    states = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
    assert states == {(e.name, str(v)): "READY" for e in ENTRIES.values() for v in e.versions}
    images = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    for name in ("autoencoder_encoder", "vae_encoder"):
        tensor = triton_client.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        result = client.infer(name, [tensor])
        np.testing.assert_allclose(result.as_numpy("code"), onnx_codes(name, images), atol=1e-6)


def test_stop_removes_the_process_its_shared_memory_and_its_files(tmp_path):
    server = TritonServer(MODEL_REPOSITORY).start()
    assert list(SHM.glob(f"*{server.shm_prefix}*"))  # the Python backend's regions exist while it runs
    server.stop()
    assert server.process.poll() is not None
    assert not list(SHM.glob(f"*{server.shm_prefix}*"))
    assert not server._workdir.exists()


def test_a_model_that_fails_to_load_stops_the_start_with_its_log_lines(tmp_path):
    shutil.copytree(MODEL_REPOSITORY / "autoencoder_encoder", tmp_path / "autoencoder_encoder")
    (tmp_path / "autoencoder_encoder" / "1" / repository.ONNX_FILE).write_bytes(b"not an onnx file")
    server = TritonServer(tmp_path)
    with pytest.raises(TritonStartError, match="autoencoder_encoder") as raised:
        server.start(timeout=60)
    assert "failed to load" in str(raised.value)
    assert not list(SHM.glob(f"*{server.shm_prefix}*"))


def test_a_server_gets_three_distinct_ports():
    # CI once failed when free ports probed one at a time gave gRPC and metrics the same port
    assert len(set(free_ports(200))) == 200
    http_port, = free_ports(1)
    server = TritonServer(MODEL_REPOSITORY, http_port=http_port)
    assert len({server.grpc_port, server.http_port, server.metrics_port}) == 3
    server.stop()  # never started: removes its private directory


def _health(channel, service: str) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service)).status


def _encode(channel, images: np.ndarray, timeout=None):
    tensor = common_pb2.Tensor(shape=images.shape, dtype=common_pb2.DATA_TYPE_UINT8, data=images.tobytes())
    request = encoder_pb2.EncodeRequest(images=common_pb2.Images(tensor=tensor))
    return encoder_pb2_grpc.EncoderStub(channel).Encode(request, timeout=timeout)


def test_gateway_on_triton_splits_large_batches_and_matches_onnxruntime(triton, start_gateway, tmp_path, mnist):
    gateway = start_gateway(runtime="triton", triton_url=triton.grpc_url, data_dir=tmp_path, gallery="none", max_batch_images=600)
    images = (mnist.test.images[:600] * 255).round().astype(np.uint8)  # over max_batch_size 256: three chunks
    with gateway.channel() as channel:
        response = _encode(channel, images)
    codes = np.frombuffer(response.codes.data, "<f4").reshape(response.codes.shape)
    np.testing.assert_allclose(codes, onnx_codes("autoencoder_encoder", images[:, None] / np.float32(255)), atol=1e-5)


def test_gateway_on_triton_generates_what_the_embedded_runtime_does(triton, start_gateway, tmp_path):
    """The conditional generator has two inputs, one of them int64 labels, through Triton's Python backend."""
    on_triton = start_gateway(runtime="triton", triton_url=triton.grpc_url, data_dir=tmp_path / "t", gallery="none")
    embedded = start_gateway(data_dir=tmp_path / "e", gallery="none")
    request = generator_pb2.GenerateRequest(
        model=common_pb2.ModelRef(name="acgan"), count=20, sampling=generator_pb2.Sampling(seed=3, labels=[4], truncation=0.7)
    )
    images = []
    for gateway in (on_triton, embedded):
        with gateway.channel() as channel:
            response = generator_pb2_grpc.GeneratorStub(channel).Generate(request)
        assert list(response.labels) == [4] * 20
        images.append(np.frombuffer(response.images.data, "<f4").reshape(response.images.shape))
    np.testing.assert_allclose(images[0], images[1], atol=1e-5)


def test_gateway_follows_triton_down_and_back_without_a_restart(start_gateway, tmp_path):
    triton = TritonServer(MODEL_REPOSITORY).start()
    ports = (triton.grpc_port, triton.http_port, triton.metrics_port)
    gateway = start_gateway(runtime="triton", triton_url=triton.grpc_url, data_dir=tmp_path, gallery="none",
                            health_poll_seconds=0.2)
    image = np.zeros((1, 28, 28), np.uint8)
    with gateway.channel() as channel:
        assert _health(channel, "latentserve.v1.Encoder") == health_pb2.HealthCheckResponse.SERVING
        triton.stop()
        wait_for(lambda: _health(channel, "latentserve.v1.Encoder") == health_pb2.HealthCheckResponse.NOT_SERVING)
        with pytest.raises(grpc.RpcError) as raised:
            _encode(channel, image)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        again = TritonServer(MODEL_REPOSITORY, *ports).start()
        try:
            wait_for(lambda: _health(channel, "latentserve.v1.Encoder") == health_pb2.HealthCheckResponse.SERVING)
            assert _encode(channel, image).num_bits == 32
        finally:
            again.stop()


def test_hot_update_switches_traffic_with_no_failed_request(start_gateway, tmp_path, small_mnist):
    from export.exporter import export_checkpoint, load_into_triton
    from training.train import train

    repo = tmp_path / "repository"
    shutil.copytree(MODEL_REPOSITORY, repo)
    checkpoint = train("autoencoder", tmp_path / "run", small_mnist, {"epochs": 1}, threads=1)
    entry = repo / "autoencoder_encoder"
    shipped = ENTRIES["autoencoder_encoder"].versions[0]
    with TritonServer(repo) as triton:
        gateway = start_gateway(runtime="triton", triton_url=triton.grpc_url, model_repository=repo,
                                data_dir=tmp_path / "data", gallery="none", health_poll_seconds=0.2)
        failures, served, stop = [], set(), threading.Event()

        def traffic():
            with gateway.channel() as channel:
                while not stop.is_set():
                    try:
                        served.add(_encode(channel, np.zeros((4, 28, 28), np.uint8)).model.version)
                    except grpc.RpcError as error:
                        failures.append(error)

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            time.sleep(0.5)
            (new_version,) = export_checkpoint(checkpoint, repo, small_mnist)
            assert new_version == entry / str(shipped + 1)
            load_into_triton(triton.grpc_url, ["autoencoder_encoder"])
            wait_for(lambda: shipped + 1 in served)

            broken = entry / str(shipped + 2)  # a version that cannot load
            shutil.copytree(new_version, broken)
            (broken / repository.ONNX_FILE).write_bytes(b"not an onnx file")
            with pytest.raises(Exception, match=f"version {shipped + 2}"):
                load_into_triton(triton.grpc_url, ["autoencoder_encoder"])
            served.clear()
            time.sleep(1.0)
        finally:
            stop.set()
            sender.join()
    assert not failures, failures[:3]
    assert served == {shipped + 1}  # the newest version that loaded keeps the traffic


def test_triton_errors_become_grpc_statuses(triton):
    entry = repository.read_repository(MODEL_REPOSITORY)["autoencoder_encoder"]

    async def scenario():
        runtime = TritonRuntime(triton.grpc_url, MODEL_REPOSITORY)
        await runtime.refresh()
        try:
            with pytest.raises(DeadlineExceeded):
                await runtime.infer(entry, 1, {"image": np.zeros((2, 1, 28, 28), np.float32)}, timeout=1e-6)
            with pytest.raises(InvalidArgument, match="image"):
                await runtime.infer(entry, 1, {"image": np.zeros((2, 1, 27, 28), np.float32)})
        finally:
            await runtime.close()

    asyncio.run(scenario())
    queue_full = InferenceServerException("Exceeds maximum queue size", "StatusCode.UNAVAILABLE")
    down = InferenceServerException("failed to connect to all addresses", "StatusCode.UNAVAILABLE")
    assert isinstance(_error(queue_full, entry), ResourceExhausted)
    assert isinstance(_error(down, entry), Unavailable)


def test_torchscript_versions_serve_through_the_same_model_py(tmp_path):
    from google.protobuf import text_format

    shutil.copytree(MODEL_REPOSITORY / "autoencoder_encoder", tmp_path / "autoencoder_encoder")
    config_path = tmp_path / "autoencoder_encoder" / repository.CONFIG_FILE
    config = repository.read_config(config_path)
    config.parameters["model_file"].string_value = repository.TORCHSCRIPT_FILE
    config_path.write_text(text_format.MessageToString(config))
    images = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    with TritonServer(tmp_path) as server:
        tensor = triton_client.InferInput("image", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        result = triton_client.InferenceServerClient(server.grpc_url).infer("autoencoder_encoder", [tensor])
    np.testing.assert_allclose(result.as_numpy("code"), onnx_codes("autoencoder_encoder", images), atol=1e-4)


def test_the_triton_command_stops_cleanly_on_sigterm():
    import signal
    import subprocess
    import sys

    others = set(SHM.iterdir())  # another test's Triton may be running
    process = subprocess.Popen([sys.executable, "-m", "latentserve.cli", "triton", "--repository", str(MODEL_REPOSITORY)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("tritonserver ready: grpc 127.0.0.1:"), line
        ours = set(SHM.iterdir()) - others
        assert ours
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        process.kill()
    assert not ours & set(SHM.iterdir())


def test_the_gateway_reaches_triton_over_tls(start_gateway, tmp_path):
    authority = CertificateAuthority(tmp_path, "triton-ca")
    issued = authority.issue("triton", server=True)
    image = tensor_batch(np.zeros((1, 28, 28), np.float32))
    with TritonServer(MODEL_REPOSITORY, grpc_tls=(issued.cert_file, issued.key_file)) as triton:
        trusting = start_gateway(runtime="triton", triton_url=triton.grpc_url, data_dir=tmp_path / "a", gallery="none",
                                 triton_tls_ca_file=authority.cert_file, health_poll_seconds=0.2)
        with trusting.channel() as channel:
            assert encoder_pb2_grpc.EncoderStub(channel).Encode(encoder_pb2.EncodeRequest(images=image)).num_bits == 32
        plaintext = start_gateway(wait=False, runtime="triton", triton_url=triton.grpc_url, data_dir=tmp_path / "b",
                                  gallery="none", health_poll_seconds=0.2)
        with plaintext.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            models = health_pb2.HealthCheckRequest(service="latentserve.v1.Models")
            wait_for(lambda: health.Check(models).status == health_pb2.HealthCheckResponse.SERVING)  # Triton asked once
            with pytest.raises(grpc.RpcError) as raised:
                encoder_pb2_grpc.EncoderStub(channel).Encode(encoder_pb2.EncodeRequest(images=image), timeout=10)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # a plaintext client cannot reach a TLS Triton
