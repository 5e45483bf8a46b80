"""Graceful shutdown of a real gateway process: on SIGTERM health turns NOT_SERVING, new calls are refused,
the calls in flight finish, and the process exits 0; a second signal stops it at once."""
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from latentserve.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from serving.triton_server import free_ports
from tests.conftest import MODEL_REPOSITORY, wait_for


class Gateway:
    """`latentserve serve` in its own process; its log lines are read as they come."""

    def __init__(self, tmp_path, grace: float):
        port, = free_ports(1)
        self.target = f"127.0.0.1:{port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "latentserve.cli", "serve", "--port", str(port), "--metrics-port", "0", "--gallery", "none",
             "--data-dir", str(tmp_path / "data"), "--model-repository", str(MODEL_REPOSITORY)],
            stderr=subprocess.PIPE, text=True, env={**os.environ, "LATENTSERVE_SHUTDOWN_GRACE_SECONDS": str(grace)},
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True)
        self.reader.start()

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.lines)


def start(tmp_path, grace: float) -> tuple[Gateway, str]:
    gateway = Gateway(tmp_path, grace)
    target = gateway.target
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)

        def serving() -> bool:
            try:
                return health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING
            except grpc.RpcError:
                return False

        wait_for(serving, timeout=60)
    return gateway, target


def test_sigterm_lets_calls_in_flight_finish_and_exits_0(tmp_path):
    gateway, target = start(tmp_path, grace=10)
    process = gateway.process
    signalled_at, outcomes, stop = [], [], threading.Event()
    request = generator_pb2.GenerateRequest(model=common_pb2.ModelRef(name="acgan"), count=256)

    def client():
        with grpc.insecure_channel(target) as channel:
            stub = generator_pb2_grpc.GeneratorStub(channel)
            while not stop.is_set():
                try:
                    stub.Generate(request, timeout=20)
                    outcomes.append((time.monotonic(), grpc.StatusCode.OK))
                except grpc.RpcError as error:
                    outcomes.append((time.monotonic(), error.code()))
                    return

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    wait_for(lambda: len(outcomes) >= 8, timeout=60)
    signalled_at.append(time.monotonic())
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    stop.set()
    for thread in clients:
        thread.join(30)
    codes = {code for _, code in outcomes}
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes  # finished, or refused: none cut off
    assert any(code == grpc.StatusCode.OK and at > signalled_at[0] for at, code in outcomes), "no call finished after the signal"
    gateway.reader.join(10)
    assert gateway.logged("stopping: health NOT_SERVING") and gateway.logged("stopped") and not gateway.logged("Traceback")


def test_a_second_signal_stops_at_once(tmp_path):
    gateway, target = start(tmp_path, grace=60)
    process = gateway.process
    with grpc.insecure_channel(target) as channel:
        stream = generator_pb2_grpc.GeneratorStub(channel).GenerateStream(
            generator_pb2.GenerateStreamRequest(model=common_pb2.ModelRef(name="acgan"), count=10_000_000, chunk_size=16)
        )
        next(stream)  # a stream that would run for minutes is in flight
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: gateway.logged("stopping: health NOT_SERVING"), timeout=30)
        time.sleep(0.5)
        assert process.poll() is None  # waiting for the stream, within its 60 s of grace
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert time.monotonic() - began < 10
        with pytest.raises(grpc.RpcError):
            for _ in stream:
                pass
