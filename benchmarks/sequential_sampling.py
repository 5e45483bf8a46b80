"""`latentserve bench sampling`: the models that sample by a loop of graph runs (PixelCNN pixel by pixel,
the RBM by its Gibbs chain), through the gateway: images per second and the samples' quality.

The gateway runs as its own process (embedded runtime, default settings: `gibbs_steps` 1000); one
GenerateStream per model asks for seed 0's first samples in chunks of `max_sequential_sampling_images`.
The samples are scored like every generator (latentserve/quality.py: FID against the 10k test images and
classifier score), beside the real-vs-real floor at the same sample count, since FID on few samples is
biased upwards.
"""
import os
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.gateway import gateway_process
from latentserve import quality
from latentserve.datasets import load_mnist
from latentserve.repository import read_repository
from latentserve.v1 import common_pb2, generator_pb2, generator_pb2_grpc

SAMPLES = {"pixelcnn": 64, "rbm": 1024}  # the PixelCNN takes 784 graph runs a chunk: minutes
CHUNK = 64  # the default max_sequential_sampling_images


def _generate(target: str, model: str, count: int) -> tuple[np.ndarray, float]:
    """Seed 0's first `count` samples, and the seconds the stream took."""
    request = generator_pb2.GenerateStreamRequest(
        model=common_pb2.ModelRef(name=model), count=count, chunk_size=CHUNK, sampling=generator_pb2.Sampling(seed=0)
    )
    began = time.perf_counter()
    with grpc.insecure_channel(target) as channel:
        chunks = list(generator_pb2_grpc.GeneratorStub(channel).GenerateStream(request))
    elapsed = time.perf_counter() - began
    images = np.concatenate([np.frombuffer(c.images.data, "<f4").reshape(c.images.shape) for c in chunks])
    return images.reshape(-1, 1, 28, 28), elapsed


def main(repository_root: Path) -> None:
    data = load_mnist()
    features = quality.FeatureNetwork(repository_root)
    _, test_features = features.test_set(data)
    versions = {e.model: e.versions[0] for e in read_repository(repository_root).values()}
    print(f"GenerateStream of seed 0's first samples in chunks of {CHUNK}, gateway defaults; {os.cpu_count()} cores\n")
    print("| model | samples | seconds | images/s | FID | real floor, same count | classifier score |")
    print("|---|---|---|---|---|---|---|")
    with gateway_process(repository_root, "--gallery", "none") as (target, _):
        for model, count in SAMPLES.items():
            images, elapsed = _generate(target, model, count)
            probabilities, sample_features = features(images)
            floor = quality.real_floor(data, features, count)
            print(f"| {model} v{versions[model]} | {count} | {elapsed:.1f} | {count / elapsed:.2f} | "
                  f"{quality.frechet_distance(sample_features, test_features):.2f} | {floor['fid']:.2f} | "
                  f"{quality.classifier_score(probabilities):.2f} |", flush=True)
