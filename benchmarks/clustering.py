"""`latentserve bench clustering`: K-means (k 10) over the stored codes of the 10,000 MNIST test images,
one collection per served encoder, as `latentserve index cluster` runs it; purity and NMI against the
digits' labels. A gateway process on a temporary data directory; its default collection (the autoencoder's
codes of the test images) is the first row."""
import numpy as np

from benchmarks.gateway import gateway_process
from latentserve.client import Client, Item
from latentserve.clustering import cluster_collection
from latentserve.datasets import load_mnist
from latentserve import repository

ADD_BATCH = 250
CLUSTERS = 10


def main(repository_root) -> None:
    test = load_mnist().test
    images = (test.images * 255).round().astype(np.uint8)
    encoders = sorted({e.model for e in repository.read_repository(repository_root).values() if e.capability == "encode" and e.versions})
    print(f"K-means, k {CLUSTERS}, 5 restarts of 25 iterations, seed 0, over {len(images):,} MNIST test images\n")
    print("| encoder (collection) | code | purity | NMI |\n|---|---|---|---|")
    with gateway_process(repository_root) as (target, _), Client(target, timeout=600) as client:
        for model in encoders:
            name = f"test_{model}"
            collection = client.create_collection(name, model)
            for start in range(0, len(images), ADD_BATCH):
                client.add_items([Item(f"t{i}", images[i], int(test.labels[i])) for i in range(start, min(start + ADD_BATCH, len(images)))], name)
            summary = cluster_collection(client, name, CLUSTERS).summary
            print(f"| {model} v{collection.model.version} | {collection.code_dim} floats | {summary['purity']:.4f} | {summary['nmi']:.4f} |", flush=True)
