"""`latentserve bench callpath`: where the gateway's CPU goes in one Encode call, layer by layer.

Each layer is a server process of its own on a free loopback port, loaded by the same grpc.aio client
(this process, concurrency 8, one raw uint8 tensor per request); its CPU per call is read from /proc. Each
layer adds one part of the real call path to the one before, so the differences split a call's CPU:

- grpc floor: a grpc.aio servicer that answers every call with a response built once (grpc's own cost:
  parsing, serializing, the transport and the event loop);
- interceptor: the gateway's interceptor (tokens, limits, metrics, errors) around that servicer;
- checks and conversions: the gateway's Encode servicer (request checks, image conversion, model lookup,
  in-flight limits, the response built from arrays) over a runtime that answers with arrays computed once;
- runtime: the embedded runtime (inline runs, or its queue and executor hop), with every onnxruntime
  session answering from arrays computed once;
- inference: the gateway as it serves (`latentserve serve`).

Then the gateway on Triton (`serve --runtime triton`, the wheel's tritonserver over the same repository),
with the CPU of the gateway process and of tritonserver apart; its gateway row adds to "checks and
conversions". A last row gives onnxruntime's own CPU per call, the session run directly in this process.
"""
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.gateway import _wait_serving, drive, gateway_session, tree_cpu_seconds, summary
from latentserve import repository
from latentserve.contract import IMAGE
from latentserve.datasets import load_mnist
from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from serving.server import Server, add_servicer
from serving.settings import Settings
from serving.triton_server import TritonServer, free_ports

LAYERS = ("grpc floor", "interceptor", "checks and conversions", "runtime", "inference")
TRITON = "gateway on Triton"
MODEL = "autoencoder_encoder"
BATCHES = (1, 64)
CONCURRENCY = 8


def _newest_model_path(repository_root: Path) -> Path:
    """The ONNX file of the version Encode runs by default."""
    entry = repository.read_repository(repository_root)[MODEL]
    return entry.version_path(entry.versions[0]) / repository.ONNX_FILE


class _AnswersOnce:
    """An onnxruntime session's stand-in: each batch size is run once on the real session, then answered
    from that result. With `wait`, a run on a worker thread first sleeps as long as the real one took
    (the same wait without the CPU, so the runtime routes requests as it would); on the event loop's
    thread (an inline run) it answers at once."""

    def __init__(self, session, wait: bool):
        self.session, self.wait = session, wait
        self.answers = {}

    def run(self, names, inputs):
        size = len(next(iter(inputs.values())))
        if size not in self.answers:
            seconds = []
            for _ in range(3):  # the first run of a session is slow: the fastest of three is what runs cost
                start = time.perf_counter()
                outputs = self.session.run(names, inputs)
                seconds.append(time.perf_counter() - start)
            self.answers[size] = outputs, min(seconds)
        outputs, seconds = self.answers[size]
        if self.wait and threading.current_thread() is not threading.main_thread():
            time.sleep(seconds)
        return outputs


class _RuntimeAnswersOnce:
    """A runtime that answers in place, without a queue, executor or session."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.sessions = {key: _AnswersOnce(session, wait=False) for key, session in runtime._sessions.items()}

    def entries(self):
        return self.runtime.entries()

    async def refresh(self):
        pass

    async def infer(self, entry, version, inputs, timeout=None):
        names = [output.name for output in entry.outputs]
        return dict(zip(names, self.sessions[entry.name, version].run(names, inputs)))

    async def close(self):
        await self.runtime.close()


class _LayeredServer(Server):
    """The gateway, with its runtime replaced for the layers under inference."""

    def __init__(self, settings: Settings, layer: str):
        super().__init__(settings)
        self.layer = layer

    async def _runtime(self):
        runtime = await super()._runtime()
        if self.layer == "checks and conversions":
            return _RuntimeAnswersOnce(runtime)
        if self.layer == "runtime":
            runtime._sessions = {key: _AnswersOnce(session, wait=True) for key, session in runtime._sessions.items()}
        return runtime


def _request(images: np.ndarray) -> encoder_pb2.EncodeRequest:
    request = encoder_pb2.EncodeRequest(model=common_pb2.ModelRef(name="autoencoder"))
    request.images.tensor.CopyFrom(common_pb2.Tensor(shape=images.shape, dtype=common_pb2.DATA_TYPE_UINT8, data=images.tobytes()))
    return request


async def _bare_server(settings: Settings, intercepted: bool) -> None:
    """A grpc.aio server whose Encode answers with a response built once per batch size, from the model."""
    session = gateway_session(_newest_model_path(settings.model_repository))
    responses = {}

    class Cached(encoder_pb2_grpc.EncoderServicer):
        async def Encode(self, request, context):
            count = request.images.tensor.shape[0]
            if count not in responses:
                pixels = np.frombuffer(request.images.tensor.data, np.uint8).reshape(count, 1, 28, 28) / np.float32(255)
                code, bits = session.run(["code", "binary_code"], {IMAGE: pixels})
                responses[count] = encoder_pb2.EncodeResponse(
                    model=common_pb2.ModelRef(name="autoencoder", version=1),
                    codes=common_pb2.Tensor(shape=code.shape, dtype=common_pb2.DATA_TYPE_FLOAT32, data=code.tobytes()),
                    bits=common_pb2.Tensor(shape=(count, bits.shape[1] // 8), dtype=common_pb2.DATA_TYPE_UINT8, data=np.packbits(bits, axis=1).tobytes()),
                    num_bits=bits.shape[1],
                )
            return responses[count]

    if intercepted:
        from serving.auth import Guard
        from serving.interceptors import ErrorsAndMetrics

        server = grpc.aio.server(interceptors=[ErrorsAndMetrics(Guard(settings), settings.max_concurrent_calls)])
    else:
        server = grpc.aio.server()
    add_servicer(Cached(), server)
    from grpc_health.v1 import health, health_pb2_grpc

    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)  # SERVING for "" and every service
    server.add_insecure_port(f"127.0.0.1:{settings.port}")
    await server.start()
    await server.wait_for_termination()


async def _layered_server(settings: Settings, layer: str) -> None:
    server = _LayeredServer(settings, layer)
    await server.start()
    await server.loaded
    await server.grpc.wait_for_termination()


def serve_layer(layer: str, port: int, repository_root: Path, data_dir: Path, triton_url: str = "") -> None:
    """The server of one layer, until killed (this module run as a program)."""
    settings = Settings(port=port, model_repository=repository_root, data_dir=data_dir, metrics_port=0, gallery="none",
                        **({"runtime": "triton", "triton_url": triton_url} if layer == TRITON else {}))
    if layer in ("grpc floor", "interceptor"):
        asyncio.run(_bare_server(settings, intercepted=layer == "interceptor"))
    else:
        asyncio.run(_layered_server(settings, layer))


async def _load(target: str, pids: list[int], request, batch: int, duration: float) -> list[dict[str, float]]:
    """The load on `target`, with CPU per call of each of `pids` (the server, and Triton behind it)."""
    async with grpc.aio.insecure_channel(target) as channel:
        call = encoder_pb2_grpc.EncoderStub(channel).Encode
        await call(request)  # the layers that answer from arrays computed once compute them now
        cpu = [tree_cpu_seconds(pid) for pid in pids]
        latencies, elapsed = await drive(lambda: call(request), CONCURRENCY, duration)
        cpu = [tree_cpu_seconds(pid) - before for pid, before in zip(pids, cpu)]
    return [summary(latencies, elapsed, batch, seconds) for seconds in cpu]


def _measure_layer(layer: str, repository_root: Path, requests: dict[int, encoder_pb2.EncodeRequest], duration: float) -> dict[int, list[dict]]:
    port, = free_ports(1)
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        triton = stack.enter_context(TritonServer(repository_root)) if layer == TRITON else None
        server = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.callpath", layer, str(port), str(repository_root), scratch, *([triton.grpc_url] if triton else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        pids = [server.pid, *([triton.process.pid] if triton else [])]
        try:
            target = f"127.0.0.1:{port}"
            _wait_serving(target, None, service="")  # every service SERVING
            return {batch: asyncio.run(_load(target, pids, request, batch, duration)) for batch, request in requests.items()}
        finally:
            server.terminate()
            server.wait(30)


def _inference_cpu(repository_root: Path, images: np.ndarray, duration: float) -> float:
    """onnxruntime's CPU ms per run of `images`, one thread calling, with the gateway's session options."""
    session = gateway_session(_newest_model_path(repository_root))
    inputs = {IMAGE: images[:, None] / np.float32(255)}
    runs, stop_at, cpu = 0, time.perf_counter() + duration, time.process_time()
    while time.perf_counter() < stop_at:
        session.run(["code", "binary_code"], inputs)
        runs += 1
    return (time.process_time() - cpu) * 1000 / runs


def main(repository_root: Path, duration: float, repetitions: int = 3) -> None:
    images = (load_mnist().test.images[:max(BATCHES)] * 255).round().astype(np.uint8)
    requests = {batch: _request(images[:batch]) for batch in BATCHES}
    print(f"Encode, {MODEL}, concurrency {CONCURRENCY}, {duration:.0f} s per cell, layers interleaved, "
          f"median of {repetitions} runs (CPU range in brackets), {os.cpu_count()} cores\n")
    print("| batch | layer | requests/s | p50 ms | p99 ms | server CPU ms / call | added by the layer |")
    print("|---|---|---|---|---|---|---|")
    runs = {layer: [] for layer in (*LAYERS, TRITON)}
    for _ in range(repetitions):
        for layer in runs:
            runs[layer].append(_measure_layer(layer, repository_root, requests, duration))

    def row(batch: int, label: str, layer: str, process: int, previous: float | None) -> float:
        cells = [run[batch][process] for run in runs[layer]]
        median = {key: float(np.median([cell[key] for cell in cells])) for key in cells[0]}
        cpu, cpus = median["cpu_ms_per_request"], [cell["cpu_ms_per_request"] for cell in cells]
        added = f"{cpu - previous:+.3f}" if previous is not None else ""
        print(f"| {batch} | {label} | {median['requests_per_s']:.0f} | {median['p50_ms']:.2f} | {median['p99_ms']:.2f} | "
              f"{cpu:.3f} [{min(cpus):.3f}-{max(cpus):.3f}] | {added} |")
        return cpu

    for batch in BATCHES:
        previous = 0.0
        for layer in LAYERS:
            previous = row(batch, layer, layer, 0, previous)
        checked = float(np.median([run[batch][0]["cpu_ms_per_request"] for run in runs["checks and conversions"]]))
        row(batch, f"{TRITON}: the gateway", TRITON, 0, checked)
        row(batch, f"{TRITON}: tritonserver", TRITON, 1, None)
        print(f"| {batch} | onnxruntime alone, in this process | | | | {_inference_cpu(repository_root, images[:batch], duration):.3f} | |")


if __name__ == "__main__":
    serve_layer(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), *sys.argv[5:])
