"""`latentserve bench generation`: GenerateStream through the gateway vs the generator run directly in
onnxruntime, in one run.

The gateway runs as its own process (`latentserve serve`, embedded runtime) on a free loopback port; the
client reads whole streams of `STREAM_IMAGES` images in chunks of `CHUNK` (the batch job's default) and
counts images per second, for the tensor and the PNG format. The direct figure runs the same ONNX file
with the gateway's session options on batches of `CHUNK` latents drawn beforehand, with as many threads as
there are streams: the bare cost of the graph, which is what the gateway's figure is compared with.
"""
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np

from latentserve.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from latentserve import repository
from benchmarks.gateway import gateway_process, gateway_session
from latentserve.contract import GENERATE as CAPABILITY, IMAGE as IMAGE_OUTPUT, LABEL as LABEL_INPUT, LATENT as LATENT_INPUT
from latentserve.latents import sample_latents

CHUNK = 256
STREAM_IMAGES = 20_480
STREAMS = (1, 2)
MODELS = ("dcgan", "acgan")


def direct(entry: repository.Entry, threads: int, duration: float) -> float:
    """Images per second of the bare graph on `threads` threads, each looping over one batch of `CHUNK`."""
    session = gateway_session(entry.version_path(entry.versions[0]) / repository.ONNX_FILE)
    feeds = {LATENT_INPUT: sample_latents(0, 0, CHUNK, entry.latent_dim)}
    if entry.classes:
        feeds[LABEL_INPUT] = (np.arange(CHUNK) % entry.classes)[:, None]
    done, lock, stop_at = [0], threading.Lock(), time.perf_counter() + duration

    def worker():
        while time.perf_counter() < stop_at:
            session.run([IMAGE_OUTPUT], feeds)
            with lock:
                done[0] += CHUNK

    began = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(worker) for _ in range(threads)]:
            future.result()
    return done[0] / (time.perf_counter() - began)


def through_gateway(target: str, model: str, streams: int, image_format: int) -> float:
    """Images per second of `streams` concurrent GenerateStream calls of STREAM_IMAGES images each."""
    def one(seed: int) -> int:
        with grpc.insecure_channel(target) as channel:
            request = generator_pb2.GenerateStreamRequest(
                model=common_pb2.ModelRef(name=model), count=STREAM_IMAGES, sampling=generator_pb2.Sampling(seed=seed),
                chunk_size=CHUNK, format=image_format,
            )
            return sum(len(c.png) or c.images.shape[0] for c in generator_pb2_grpc.GeneratorStub(channel).GenerateStream(request))

    began = time.perf_counter()
    with ThreadPoolExecutor(streams) as pool:
        images = sum(pool.map(one, range(streams)))
    return images / (time.perf_counter() - began)


def main(repository_root: Path, duration: float) -> None:
    entries = {e.model: e for e in repository.read_repository(repository_root).values() if e.capability == CAPABILITY}
    print(f"GenerateStream, {STREAM_IMAGES} images per stream in chunks of {CHUNK}; direct: {duration:.0f} s per cell; "
          f"{os.cpu_count()} cores\n")
    print("| model | streams (threads) | direct onnxruntime img/s | gateway tensor img/s | gateway / direct | gateway PNG img/s |")
    print("|---|---|---|---|---|---|")
    with gateway_process(repository_root, "--gallery", "none") as (target, _):
        for model in MODELS:
            entry = entries[model]
            for streams in STREAMS:
                base = direct(entry, streams, duration)
                tensor = through_gateway(target, model, streams, common_pb2.IMAGE_FORMAT_TENSOR)
                png = through_gateway(target, model, streams, common_pb2.IMAGE_FORMAT_PNG)
                print(f"| {model} v{entry.versions[0]} | {streams} | {base:.0f} | {tensor:.0f} | {tensor / base:.0%} | {png:.0f} |", flush=True)
