"""`serve --workers N`: gateway processes sharing one port and one Milvus server."""
import os
import signal
import subprocess
import sys
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from latentserve.v1 import common_pb2, models_pb2, models_pb2_grpc, search_pb2, search_pb2_grpc
from serving.settings import Settings
from serving.triton_server import free_port_run
from tests.conftest import MODEL_REPOSITORY, tensor_batch, wait_for


@pytest.mark.parametrize("settings, refusal", [
    ({"workers": 2}, "Milvus server"),
    ({"workers": 2, "index_backend": "milvus", "milvus_uri": "data/milvus.db"}, "Milvus server"),
    ({"workers": 2, "index_backend": "milvus", "milvus_uri": "http://127.0.0.1:19530", "port": 0}, "share one port"),
    ({"workers": 2, "index_backend": "milvus", "milvus_uri": "http://127.0.0.1:19530", "metrics_port": 9000, "health_port": 9001}, "overlap"),
])
def test_settings_refuse_workers_that_cannot_share_their_state_or_ports(settings, refusal):
    with pytest.raises(ValidationError, match=refusal):
        Settings(**settings)


def test_serve_says_why_it_refuses_workers_on_the_embedded_index():
    result = subprocess.run([sys.executable, "-m", "latentserve.cli", "serve", "--workers", "2"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "workers share their collections through a Milvus server" in result.stderr


def _workers(pid: int) -> set[int]:
    """The worker processes of `serve` at `pid` (its other child is multiprocessing's resource tracker)."""
    children = {int(child) for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()}
    return {child for child in children if b"spawn_main" in open(f"/proc/{child}/cmdline", "rb").read()}


def _requests_answered(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("latentserve_requests_total{"))


def _serving(health_port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{health_port}") as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        except grpc.RpcError:
            return False
    return response.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def workers(milvus_server, tmp_path):
    """`serve --workers 2` over the Milvus server, once both are SERVING: (process, port, metrics port of
    worker 0). Worker i has /metrics on metrics port + i and health on health port + i."""
    port = free_port_run(5)
    metrics_port, health_port = port + 1, port + 3
    process = subprocess.Popen(
        [sys.executable, "-m", "latentserve.cli", "serve", "--workers", "2", "--port", str(port), "--metrics-port", str(metrics_port),
         "--health-port", str(health_port), "--index-backend", "milvus", "--milvus-uri", milvus_server, "--gallery", "none",
         "--data-dir", str(tmp_path), "--model-repository", str(MODEL_REPOSITORY)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_for(lambda: all(_serving(health_port + i) for i in range(2)), timeout=120)
        yield process, port, metrics_port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _answers(metrics_port: int) -> bool:
    try:
        _requests_answered(metrics_port)
        return True
    except OSError:
        return False


def _channel(port: int) -> grpc.Channel:
    """A channel with a connection of its own (channels otherwise share one per target)."""
    return grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)])


def test_workers_share_the_port_and_the_collections(workers):
    process, port, metrics_port = workers
    channels = [_channel(port) for _ in range(16)]
    try:
        for channel in channels:
            assert health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
            assert models_pb2_grpc.ModelsStub(channel).ListModels(models_pb2.ListModelsRequest()).models
        # the kernel spread the 16 connections over both workers (all on one: a chance of 2 in 65,536)
        assert all(_requests_answered(metrics_port + i) > 0 for i in range(2))
        image = common_pb2.Image(tensor=tensor_batch(np.zeros((1, 28, 28), np.float32)).tensor)
        search_pb2_grpc.SearchStub(channels[0]).AddItems(search_pb2.AddItemsRequest(items=[search_pb2.Item(id="shared", image=image)]))
        for channel in channels:  # whichever worker answers sees the item
            found = search_pb2_grpc.SearchStub(channel).GetItems(search_pb2.GetItemsRequest(ids=["shared"]))
            assert [item.id for item in found.items] == ["shared"]
    finally:
        for channel in channels:
            channel.close()
    pids = _workers(process.pid)
    assert len(pids) == 2
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids))


def test_workers_stop_when_serve_is_killed_outright(workers):
    process, _, _ = workers
    pids = _workers(process.pid)
    process.kill()
    process.wait()
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids))


def test_a_worker_that_dies_stops_the_others_and_serve_fails(workers):
    process, port, metrics_port = workers
    pids = _workers(process.pid)
    os.kill(min(pids), signal.SIGKILL)
    assert process.wait(60) == 1
    assert "exited with status -9; the other workers were stopped" in process.stderr.read()
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids))
    assert not any(_answers(metrics_port + i) for i in range(2))
