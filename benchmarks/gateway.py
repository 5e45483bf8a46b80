"""`latentserve bench serving`, `bench classification`, `bench translation` and `bench density`: Encode (or
Classify, Translate, Score) through the gateway vs onnxruntime called directly, in one run. The gateway's
Score also binarises the images and codes them for the complexity term (latentserve/density.py); the
direct figure is the graph alone.

The gateway runs as its own process (`latentserve serve`, embedded runtime, default gallery) on a free
loopback port; the load generator is a grpc.aio client in this process. The direct figures run the same
ONNX file with the same session options in this process, with as many threads as the gateway has
concurrent calls. Images travel as one raw uint8 tensor per request. Beside throughput it reports CPU
time per request: the gateway process's own (from /proc, so Linux only) and this process's for the direct
calls; the client's CPU is in neither, though it shares the same cores during the gateway runs.
"""
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnxruntime
from grpc_health.v1 import health_pb2, health_pb2_grpc

from latentserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    density_pb2,
    density_pb2_grpc,
    encoder_pb2,
    encoder_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
    translator_pb2,
    translator_pb2_grpc,
)
from latentserve import repository
from latentserve.datasets import load_mnist
from serving.settings import Settings
from serving.triton_server import free_ports

BATCHES = (1, 64)
CONCURRENCY = (1, 8)


def summary(latencies: list[float], elapsed: float, batch: int, cpu_seconds: float = float("nan")) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {
        "requests_per_s": len(ms) / elapsed,
        "images_per_s": len(ms) * batch / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "cpu_ms_per_request": cpu_seconds * 1000 / len(ms),
    }


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its children, while they run."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    total = 0.0
    for each in (pid, *map(int, children)):
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def gateway_session(model_path: Path) -> onnxruntime.InferenceSession:
    """onnxruntime on one ONNX file with the session options the embedded runtime uses by default."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = Settings().intra_op_threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def _ref(entry: repository.Entry) -> common_pb2.ModelRef:
    return common_pb2.ModelRef(name=entry.model)


# What each benchmarked call runs: its stub, its request for an entry (images added per run), and the graph
# outputs the gateway fetches. A translate request names the direction too: the entry's graph.
CALLS = {
    "Encode": (encoder_pb2_grpc.EncoderStub, lambda entry: encoder_pb2.EncodeRequest(model=_ref(entry)), ["code", "binary_code"]),
    "Classify": (classifier_pb2_grpc.ClassifierStub, lambda entry: classifier_pb2.ClassifyRequest(model=_ref(entry)), ["probabilities"]),
    "Score": (density_pb2_grpc.DensityStub, lambda entry: density_pb2.ScoreRequest(model=_ref(entry)), ["log_likelihood"]),
    "Translate": (
        translator_pb2_grpc.TranslatorStub,
        lambda entry: translator_pb2.TranslateRequest(model=_ref(entry), direction=entry.graph),
        ["translated"],
    ),
}


def direct(model_path: Path, method: str, images: np.ndarray, concurrency: int, duration: float) -> dict[str, float]:
    session = gateway_session(model_path)
    inputs = {"image": images[:, None].astype(np.float32) / 255}
    outputs = CALLS[method][2]
    latencies, lock, stop_at = [], threading.Lock(), time.perf_counter() + duration

    def worker():
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            session.run(outputs, inputs)
            with lock:
                latencies.append(time.perf_counter() - start)

    began, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return summary(latencies, time.perf_counter() - began, len(images), time.process_time() - cpu)


async def drive(call, concurrency: int, duration: float) -> tuple[list[float], float]:
    latencies, stop_at = [], time.perf_counter() + duration

    async def worker():
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - began


async def through_gateway(
    target: str, pid: int, method: str, entry: repository.Entry, images: np.ndarray, concurrency: int, duration: float
) -> dict[str, float]:
    stub_class, request_for, _ = CALLS[method]
    request = request_for(entry)
    request.images.tensor.CopyFrom(common_pb2.Tensor(shape=images.shape, dtype=common_pb2.DATA_TYPE_UINT8, data=images.tobytes()))
    async with grpc.aio.insecure_channel(target) as channel:
        call = getattr(stub_class(channel), method)
        cpu = process_cpu_seconds(pid)
        latencies, elapsed = await drive(lambda: call(request), concurrency, duration)
        cpu = process_cpu_seconds(pid) - cpu
    return summary(latencies, elapsed, len(images), cpu)


async def search_latency(target: str, images: np.ndarray, duration: float) -> dict[str, dict[str, float]]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = search_pb2_grpc.SearchStub(channel)
        image = common_pb2.Image(tensor=common_pb2.Tensor(shape=[28, 28], dtype=common_pb2.DATA_TYPE_UINT8, data=images[0].tobytes()))
        queries = {
            "by id, code space": search_pb2.SearchRequest(id="mnist-test-00000", k=10),
            "by id, hash space": search_pb2.SearchRequest(id="mnist-test-00000", k=10, space=search_pb2.SPACE_HASH),
            "by image, code space": search_pb2.SearchRequest(image=image, k=10),
        }
        results = {}
        for name, request in queries.items():
            latencies, elapsed = await drive(lambda: stub.Search(request), 1, duration)
            results[name] = summary(latencies, elapsed, 1)
    return results


@contextlib.contextmanager
def source_tree(revision: str):
    """The project's tree at git `revision`, checked out in a temporary directory (a git worktree)."""
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), revision], check=True, capture_output=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], check=True, capture_output=True)


@contextlib.contextmanager
def gateway_process(
    repository_root: Path, *flags: str, ca_file: Path | None = None, data_dir: Path | None = None, source: Path | None = None,
    settings: dict[str, str] | None = None,
):
    """`latentserve serve` in its own process on a free loopback port, on `data_dir` (a temporary one if
    none), once its Search service is SERVING; stopped on exit. With `ca_file`, a TLS gateway whose
    certificate that CA signed; with `source`, the gateway's code comes from that tree (`source_tree`);
    `settings` are more, by name, passed as LATENTSERVE_ variables."""
    port, = free_ports(1)
    with tempfile.TemporaryDirectory() as scratch:
        server = subprocess.Popen(
            [sys.executable, "-m", "latentserve.cli", "serve", "--port", str(port), "--metrics-port", "0",
             "--data-dir", str(data_dir or scratch), "--model-repository", str(repository_root.resolve()), *flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=source,  # `-m` imports from the working directory first
            env={**os.environ, **{f"LATENTSERVE_{name.upper()}": value for name, value in (settings or {}).items()}},
        )
        try:
            target = f"127.0.0.1:{port}"
            _wait_serving(target, ca_file)
            yield target, server.pid
        finally:
            server.terminate()
            server.wait(30)


def _wait_serving(target: str, ca_file: Path | None, timeout: float = 120, service: str = "latentserve.v1.Search") -> None:
    deadline = time.time() + timeout
    credentials = grpc.ssl_channel_credentials(ca_file.read_bytes()) if ca_file else None
    with grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.time() < deadline:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"gateway at {target} did not become ready")


def compare(gateways: dict[str, tuple[str, int]], method: str, entry: repository.Entry, duration: float, batches=BATCHES) -> None:
    """The table of one call on one model: each gateway (by label: its target and pid) vs direct, for each
    batch size and concurrency. Ratios are to direct onnxruntime, and to the first gateway where there
    are several."""
    model_path = entry.version_path(entry.versions[0]) / repository.ONNX_FILE
    test_images = (load_mnist().test.images * 255).round().astype(np.uint8)
    first = next(iter(gateways))
    print(f"{method}, {entry.name} v{entry.versions[0]}, {duration:.0f} s per cell, {os.cpu_count()} cores\n")
    print("| batch | concurrency | path | requests/s | images/s | p50 ms | p99 ms | CPU ms / request | throughput / direct |"
          + (f" {first} / this row |" if len(gateways) > 1 else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if len(gateways) > 1 else ""))
    for batch in batches:
        for concurrency in CONCURRENCY:
            images = test_images[:batch]
            rows = {label: asyncio.run(through_gateway(target, pid, method, entry, images, concurrency, duration))
                    for label, (target, pid) in gateways.items()}
            base = direct(model_path, method, images, concurrency, duration)
            for path, r in (*rows.items(), ("onnxruntime direct", base)):
                ours = path in rows
                to_direct = f"{r['images_per_s'] / base['images_per_s']:.0%}" if ours else ""
                to_first = f" {rows[first]['requests_per_s'] / r['requests_per_s']:.2f}x |" if ours else " |"
                print(f"| {batch} | {concurrency} | {path} | {r['requests_per_s']:.0f} | {r['images_per_s']:.0f} | "
                      f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['cpu_ms_per_request']:.2f} | {to_direct} |"
                      f"{to_first if len(rows) > 1 else ''}", flush=True)


def main(repository_root: Path, duration: float, against: str | None = None) -> None:
    """Encode and Search; with `against` (a git revision), the gateway of that revision beside this one."""
    entry = repository.read_repository(repository_root)["autoencoder_encoder"]
    test_images = (load_mnist().test.images * 255).round().astype(np.uint8)
    with contextlib.ExitStack() as stack:
        gateways = {"gateway": stack.enter_context(gateway_process(repository_root))}
        if against:
            tree = stack.enter_context(source_tree(against))
            gateways[f"gateway at {against}"] = stack.enter_context(gateway_process(repository_root, source=tree))
        compare(gateways, "Encode", entry, duration)
        print("\nSearch on the default gallery (10,000 MNIST test images), k=10, one client\n")
        print("| query | requests/s | p50 ms | p99 ms |\n|---|---|---|---|")
        for name, r in asyncio.run(search_latency(gateways["gateway"][0], test_images, duration)).items():
            print(f"| {name} | {r['requests_per_s']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")


def main_classification(repository_root: Path, duration: float) -> None:
    """Classify on the default classifier, at batch 64 (the issue's figure) and 1."""
    entry = next(
        e for e in repository.read_repository(repository_root).values()
        if e.model == Settings().default_classifier and e.capability == "classify"
    )
    with gateway_process(repository_root) as gateway:
        compare({"gateway": gateway}, "Classify", entry, duration)


def main_density(repository_root: Path, duration: float) -> None:
    """Score on the default density model, at batch 64 (the issue's figure) and 1."""
    entry = next(
        e for e in repository.read_repository(repository_root).values()
        if e.model == Settings().default_density_model and e.capability == "density"
    )
    with gateway_process(repository_root) as gateway:
        compare({"gateway": gateway}, "Score", entry, duration)


def main_translation(repository_root: Path, duration: float) -> None:
    """Translate in every direction of every translator in the repository, at batch 64 and 1."""
    entries = [e for e in repository.read_repository(repository_root).values() if e.capability == "translate"]
    if not entries:
        raise SystemExit(f"no translate graphs in {repository_root}")
    with gateway_process(repository_root) as gateway:
        for entry in entries:
            compare({"gateway": gateway}, "Translate", entry, duration)
            print()
