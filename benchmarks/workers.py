"""`latentserve bench workers`: Encode through `serve --workers 1` and `--workers 2`, in one run.

Both gateways keep their collections on one Milvus Lite server on a loopback TCP port (what `--workers`
needs; Encode does not touch it). The load is the serving benchmark's: a grpc.aio client in this process,
one raw uint8 batch per call, concurrency 8, over 8 channels with a connection each, so the kernel spreads
them over the workers. CPU per request is the whole process tree's: the parent, its workers and
multiprocessing's resource tracker.
"""
import asyncio
import contextlib
import os
import tempfile
from pathlib import Path

import grpc
import numpy as np

from benchmarks.gateway import _wait_serving, direct, drive, gateway_process, summary, tree_cpu_seconds
from latentserve import repository
from latentserve.datasets import load_mnist
from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from serving.triton_server import free_port_run, free_ports

MODEL = "autoencoder_encoder"
BATCHES = (1, 64)
CONCURRENCY = 8
WORKERS = (1, 2)


@contextlib.contextmanager
def milvus_lite_server():
    """Milvus Lite on a free loopback port: its http:// URI."""
    from milvus_lite.server import Server  # the milvus extra

    port, = free_ports(1)
    with tempfile.TemporaryDirectory() as scratch:
        server = Server(str(Path(scratch) / "bench.db"), address=f"127.0.0.1:{port}")
        if not (server.init() and server.start()):
            raise RuntimeError("Milvus Lite did not start")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()


async def _load(target: str, pid: int, images: np.ndarray, duration: float) -> dict[str, float]:
    request = encoder_pb2.EncodeRequest(model=common_pb2.ModelRef(name="autoencoder"))
    request.images.tensor.CopyFrom(common_pb2.Tensor(shape=images.shape, dtype=common_pb2.DATA_TYPE_UINT8, data=images.tobytes()))
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(CONCURRENCY)]
    try:
        stubs = [encoder_pb2_grpc.EncoderStub(channel) for channel in channels]
        await asyncio.gather(*(stub.Encode(request) for stub in stubs))  # every connection made before the clock starts
        turn = iter(range(1 << 62))
        cpu = tree_cpu_seconds(pid)
        latencies, elapsed = await drive(lambda: stubs[next(turn) % CONCURRENCY].Encode(request), CONCURRENCY, duration)
        cpu = tree_cpu_seconds(pid) - cpu
    finally:
        for channel in channels:
            await channel.close()
    return summary(latencies, elapsed, len(images), cpu)


def main(repository_root: Path, duration: float) -> None:
    entry = repository.read_repository(repository_root)[MODEL]
    model_path = entry.version_path(entry.versions[0]) / repository.ONNX_FILE
    test_images = (load_mnist().test.images[:max(BATCHES)] * 255).round().astype(np.uint8)
    print(f"Encode, {MODEL} v{entry.versions[0]}, concurrency {CONCURRENCY}, {duration:.0f} s per cell, {os.cpu_count()} cores\n")
    print("| batch | path | requests/s | images/s | p50 ms | p99 ms | CPU ms / request | throughput / 1 worker |")
    print("|---|---|---|---|---|---|---|---|")
    with milvus_lite_server() as milvus_uri, contextlib.ExitStack() as stack:
        gateways = {}
        for count in WORKERS:
            health_port = free_port_run(count)
            gateways[count] = stack.enter_context(gateway_process(
                repository_root, "--workers", str(count), "--health-port", str(health_port),
                "--index-backend", "milvus", "--milvus-uri", milvus_uri, "--gallery", "none",
            ))
            for index in range(count):  # the shared port answers once the first is ready; each has its own
                _wait_serving(f"127.0.0.1:{health_port + index}", None)
        for batch in BATCHES:
            images = test_images[:batch]
            rows = {f"{count} worker{'s' * (count > 1)}": asyncio.run(_load(*gateways[count], images, duration)) for count in WORKERS}
            rows["onnxruntime direct, 8 threads"] = direct(model_path, "Encode", images, CONCURRENCY, duration)
            first = rows["1 worker"]["requests_per_s"]
            for path, r in rows.items():
                ratio = f"{r['requests_per_s'] / first:.2f}x" if "worker" in path else ""
                print(f"| {batch} | {path} | {r['requests_per_s']:.0f} | {r['images_per_s']:.0f} | {r['p50_ms']:.2f} | "
                      f"{r['p99_ms']:.2f} | {r['cpu_ms_per_request']:.2f} | {ratio} |", flush=True)
