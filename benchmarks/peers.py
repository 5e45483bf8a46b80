"""`latentserve bench peers`: one ONNX model (the shipped encoder) served five ways on this machine, in
one run, at batch 1 and 64 and concurrency 1 and 8:

- onnxruntime called directly in this process, from as many threads as the concurrency (the limit);
- latentserve on its embedded runtime (`latentserve serve`): its own Encode, and the same graph through
  its Open Inference Protocol service (ModelInfer);
- latentserve on Triton (`serve --runtime triton`, on the Triton below);
- Triton called directly with tritonclient (the wheel's tritonserver with the repository's config: the
  Python backend running the version's model.py, which runs onnxruntime; dynamic batching on, one CPU
  instance);
- MLServer with a small custom runtime (benchmarks/mlserver_runtime.py: onnxruntime, one intra-op
  thread, run on MLServer's event loop, `parallel_workers` 0), in its own virtual environment (`make peers`).

Every server gets the same float32 images over gRPC from a grpc.aio client in this process (Triton and
MLServer through tritonclient's Open Inference Protocol client). CPU per request is the server side's:
every process of the path (the gateway and the Triton behind it, say), read from /proc.
"""
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_client

from benchmarks.gateway import direct, drive, gateway_process, summary, tree_cpu_seconds
from latentserve import repository
from latentserve.datasets import load_mnist
from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from serving.triton_server import TritonServer, free_ports

MODEL = "autoencoder_encoder"
OUTPUTS = ["code", "binary_code"]
BATCHES = (1, 64)
CONCURRENCY = (1, 8)
MLSERVER = Path(".venv-peers/bin/mlserver")  # `make peers`


@contextlib.contextmanager
def mlserver(model_path: Path, executable: Path = MLSERVER, timeout: float = 120):
    """MLServer serving `model_path` as MODEL with the custom runtime, on free loopback ports: its gRPC address."""
    if not executable.exists():
        raise SystemExit(f"no MLServer at {executable}: `make peers` makes its virtual environment")
    grpc_port, http_port, metrics_port = free_ports(3)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        shutil.copy(Path(__file__).with_name("mlserver_runtime.py"), folder)
        (folder / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "grpc_port": grpc_port, "http_port": http_port, "metrics_port": metrics_port, "parallel_workers": 0,
        }))
        (folder / MODEL).mkdir()
        (folder / MODEL / "model-settings.json").write_text(json.dumps({
            "name": MODEL, "implementation": "mlserver_runtime.OnnxModel", "parameters": {"uri": str(model_path.resolve())},
        }))
        server = subprocess.Popen([str(executable.resolve()), "start", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  cwd=folder, start_new_session=True)
        try:
            address = f"127.0.0.1:{grpc_port}"
            asyncio.run(_wait_model_ready(address, server, timeout))
            yield address, server.pid
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)


async def _wait_model_ready(address: str, server: subprocess.Popen, timeout: float) -> None:
    client = triton_client.InferenceServerClient(address)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and server.poll() is None:
            with contextlib.suppress(Exception):
                if await client.is_model_ready(MODEL):
                    return
            await asyncio.sleep(0.5)
    finally:
        await client.close()
    raise RuntimeError(f"MLServer at {address} did not get {MODEL} ready")


async def _open_inference(address: str, pids: list[int], pixels: np.ndarray, concurrency: int, duration: float) -> dict[str, float]:
    """Triton or MLServer through tritonclient, over the Open Inference Protocol's gRPC."""
    client = triton_client.InferenceServerClient(address)
    tensor = triton_client.InferInput("image", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    outputs = [triton_client.InferRequestedOutput(name) for name in OUTPUTS]
    try:
        await client.infer(MODEL, [tensor], outputs=outputs)
        cpu = sum(map(tree_cpu_seconds, pids))
        latencies, elapsed = await drive(lambda: client.infer(MODEL, [tensor], outputs=outputs), concurrency, duration)
        cpu = sum(map(tree_cpu_seconds, pids)) - cpu
    finally:
        await client.close()
    return summary(latencies, elapsed, len(pixels), cpu)


async def _latentserve(target: str, pids: list[int], pixels: np.ndarray, concurrency: int, duration: float) -> dict[str, float]:
    request = encoder_pb2.EncodeRequest(model=common_pb2.ModelRef(name="autoencoder"))
    request.images.tensor.CopyFrom(common_pb2.Tensor(shape=pixels.shape, dtype=common_pb2.DATA_TYPE_FLOAT32, data=pixels.tobytes()))
    async with grpc.aio.insecure_channel(target) as channel:
        call = encoder_pb2_grpc.EncoderStub(channel).Encode
        await call(request)
        cpu = sum(map(tree_cpu_seconds, pids))
        latencies, elapsed = await drive(lambda: call(request), concurrency, duration)
        cpu = sum(map(tree_cpu_seconds, pids)) - cpu
    return summary(latencies, elapsed, len(pixels), cpu)


def main(repository_root: Path, duration: float, batches=BATCHES, concurrencies=CONCURRENCY, mlserver_executable: Path = MLSERVER) -> None:
    entry = repository.read_repository(repository_root)[MODEL]
    version = entry.versions[0]
    model_path = entry.version_path(version) / repository.ONNX_FILE
    test_images = (load_mnist().test.images * 255).round().astype(np.uint8)
    print(f"Encode, {MODEL} v{version}, float32 images, {duration:g} s per cell, {os.cpu_count()} cores\n")
    print("| batch | concurrency | path | requests/s | images/s | p50 ms | p99 ms | server CPU ms / request | throughput / onnxruntime |")
    print("|---|---|---|---|---|---|---|---|---|")
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        alone = scratch / "repository"  # the one entry, for Triton and the gateway on it
        shutil.copytree(entry.path, alone / MODEL)
        triton = stack.enter_context(TritonServer(alone))
        embedded = stack.enter_context(gateway_process(repository_root, "--gallery", "none"))
        on_triton = stack.enter_context(gateway_process(alone, "--gallery", "none", "--runtime", "triton", "--triton-url", triton.grpc_url))
        ml = stack.enter_context(mlserver(model_path, mlserver_executable))
        paths = {
            "latentserve, embedded": lambda pixels, c: _latentserve(embedded[0], [embedded[1]], pixels, c, duration),
            "latentserve, Open Inference Protocol": lambda pixels, c: _open_inference(embedded[0], [embedded[1]], pixels, c, duration),
            "latentserve -> Triton": lambda pixels, c: _latentserve(on_triton[0], [on_triton[1], triton.process.pid], pixels, c, duration),
            "Triton, tritonclient": lambda pixels, c: _open_inference(triton.grpc_url, [triton.process.pid], pixels, c, duration),
            "MLServer, custom runtime": lambda pixels, c: _open_inference(ml[0], [ml[1]], pixels, c, duration),
        }
        for batch in batches:
            for concurrency in concurrencies:
                pixels = test_images[:batch, None].astype(np.float32) / 255
                limit = direct(model_path, "Encode", test_images[:batch], concurrency, duration)
                rows = {"onnxruntime, in process": limit, **{name: asyncio.run(run(pixels, concurrency)) for name, run in paths.items()}}
                for name, r in rows.items():
                    print(f"| {batch} | {concurrency} | {name} | {r['requests_per_s']:.0f} | {r['images_per_s']:.0f} | {r['p50_ms']:.2f} | "
                          f"{r['p99_ms']:.2f} | {r['cpu_ms_per_request']:.2f} | {r['images_per_s'] / limit['images_per_s']:.0%} |", flush=True)
