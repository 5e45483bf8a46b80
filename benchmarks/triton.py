"""`latentserve bench triton`: Encode via gateway->Triton, tritonclient->Triton directly, and
gateway->embedded, in one run, with Triton's dynamic batching on and then off.

Triton is the wheel's tritonserver over a temporary copy of the model repository (for "off" the copy's
configs lose their `dynamic_batching` block). Every path gets the same requests: one raw batch of MNIST
test images per call, from a grpc.aio client in this process. Triton's batch size is read from its
Prometheus metrics: images per model execution (nv_inference_count / nv_inference_exec_count) and
requests per execution (nv_inference_request_success / nv_inference_exec_count) over each measurement.
"""
import asyncio
import os
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton_client
from google.protobuf import text_format

from latentserve import repository
from benchmarks.gateway import CONCURRENCY, drive, summary, gateway_process, through_gateway
from latentserve.datasets import load_mnist
from serving.triton_server import TritonServer

MODEL = "autoencoder_encoder"
BATCHES = (1, 16)


def _triton_counters(metrics_url: str) -> dict[str, float]:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    counters = {}
    for name in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success"):
        values = re.findall(rf'^{name}{{[^}}]*model="{MODEL}"[^}}]*}} (\S+)$', text, re.MULTILINE)
        counters[name] = sum(float(v) for v in values)
    return counters


def _batching(before: dict[str, float], after: dict[str, float]) -> tuple[float, float]:
    executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    images = after["nv_inference_count"] - before["nv_inference_count"]
    requests = after["nv_inference_request_success"] - before["nv_inference_request_success"]
    return images / executions, requests / executions


async def _direct_triton(url: str, images: np.ndarray, concurrency: int, duration: float) -> dict[str, float]:
    pixels = images[:, None].astype(np.float32) / 255
    client = triton_client.InferenceServerClient(url)
    tensor = triton_client.InferInput("image", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    outputs = [triton_client.InferRequestedOutput(name) for name in ("code", "binary_code")]
    try:
        latencies, elapsed = await drive(lambda: client.infer(MODEL, [tensor], outputs=outputs), concurrency, duration)
    finally:
        await client.close()
    return summary(latencies, elapsed, len(images))


def _repository_copy(source: Path, target: Path, dynamic_batching: bool) -> Path:
    shutil.copytree(source, target)
    if not dynamic_batching:
        for path in target.glob(f"*/{repository.CONFIG_FILE}"):
            config = repository.read_config(path)
            config.ClearField("dynamic_batching")
            path.write_text(text_format.MessageToString(config))
    return target


def _row(label: str, batch: int, concurrency: int, r: dict, batching: tuple[float, float] | None, ratio: str = "") -> str:
    sizes = f"{batching[0]:.1f} / {batching[1]:.1f}" if batching else ""
    return (f"| {label} | {batch} | {concurrency} | {r['requests_per_s']:.0f} | {r['images_per_s']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {sizes} | {ratio} |")


def main(repository_root: Path, duration: float) -> None:
    test_images = (load_mnist().test.images * 255).round().astype(np.uint8)
    entry = repository.read_repository(repository_root)[MODEL]
    print(f"Encode, {MODEL}, {duration:.0f} s per cell, {os.cpu_count()} cores\n")
    print("| path | batch | concurrency | requests/s | images/s | p50 ms | p99 ms | Triton images / requests per execution | gateway / direct Triton |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dynamic_batching in (True, False):
        mode = "dynamic batching on" if dynamic_batching else "dynamic batching off"
        with tempfile.TemporaryDirectory() as scratch:
            copy = _repository_copy(repository_root, Path(scratch) / "repository", dynamic_batching)
            with TritonServer(copy) as triton, gateway_process(copy, "--runtime", "triton", "--triton-url", triton.grpc_url) as (target, pid):
                for batch in BATCHES:
                    for concurrency in CONCURRENCY:
                        images = test_images[:batch]
                        before = _triton_counters(triton.metrics_url)
                        direct = asyncio.run(_direct_triton(triton.grpc_url, images, concurrency, duration))
                        middle = _triton_counters(triton.metrics_url)
                        gateway = asyncio.run(through_gateway(target, pid, "Encode", entry, images, concurrency, duration))
                        after = _triton_counters(triton.metrics_url)
                        ratio = f"{gateway['requests_per_s'] / direct['requests_per_s']:.0%}"
                        print(_row(f"tritonclient -> Triton, {mode}", batch, concurrency, direct, _batching(before, middle)))
                        print(_row(f"gateway -> Triton, {mode}", batch, concurrency, gateway, _batching(middle, after), ratio))
    with gateway_process(repository_root) as (target, pid):
        for batch in BATCHES:
            for concurrency in CONCURRENCY:
                embedded = asyncio.run(through_gateway(target, pid, "Encode", entry, test_images[:batch], concurrency, duration))
                print(_row("gateway -> embedded onnxruntime", batch, concurrency, embedded, None))
