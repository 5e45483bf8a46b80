"""`latentserve bench reindex`: re-embedding a collection while clients search it and write to it.

A gateway process (embedded backend) gets a collection that keeps its images, bound to autoencoder
version 1, holding `items` MNIST training images (uint8 tensors, 256 an AddItems call). Then
ReindexCollection builds it again with the newest version while SEARCHERS clients search it by image
(k 10) without pause and a writer adds an item every WRITE_EVERY seconds; the figures: the reindex's
time, the searches and writes made meanwhile and how they ended, the search latency before and during,
and the items at the end (every one, the writes included). Clients and gateway share the cores.
"""
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.gateway import gateway_process
from latentserve.datasets import load_mnist
from latentserve.v1 import common_pb2, search_pb2, search_pb2_grpc

ITEMS = 100_000  # without --items
COLLECTION = "catalogue"
ADD_BATCH = 256
SEARCHERS = 2
WRITE_EVERY = 0.1  # seconds
BASELINE_SECONDS = 5.0


def image(pixels: np.ndarray) -> common_pb2.Image:
    return common_pb2.Image(tensor=common_pb2.Tensor(shape=pixels.shape, dtype=common_pb2.DATA_TYPE_UINT8, data=pixels.tobytes()))


class Clients:
    """SEARCHERS searching threads and one writing thread, each recording (status, seconds) per call."""

    def __init__(self, stub, queries: np.ndarray, fresh: np.ndarray):
        self.stub, self.queries, self.fresh = stub, queries, fresh
        self.searches: list[tuple[grpc.StatusCode, float]] = []
        self.writes: list[tuple[grpc.StatusCode, float]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._search, args=(i,)) for i in range(SEARCHERS)] + [threading.Thread(target=self._write)]

    def _timed(self, call, record: list) -> None:
        start = time.perf_counter()
        try:
            call()
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
        record.append((code, time.perf_counter() - start))

    def _search(self, first: int) -> None:
        for i in range(first, 1 << 62, SEARCHERS):
            if self.stop.is_set():
                return
            request = search_pb2.SearchRequest(collection=COLLECTION, image=image(self.queries[i % len(self.queries)]), k=10)
            self._timed(lambda: self.stub.Search(request, timeout=30), self.searches)

    def _write(self) -> None:
        for i, pixels in enumerate(self.fresh):
            if self.stop.wait(WRITE_EVERY):
                return
            request = search_pb2.AddItemsRequest(collection=COLLECTION, items=[search_pb2.Item(id=f"written-{i}", image=image(pixels))])
            self._timed(lambda: self.stub.AddItems(request, timeout=30), self.writes)

    def run(self) -> None:
        for thread in self.threads:
            thread.start()

    def end(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def summary(calls: list[tuple[grpc.StatusCode, float]]) -> str:
    failed = sum(code != grpc.StatusCode.OK for code, _ in calls)
    ms = np.array([seconds for _, seconds in calls]) * 1000
    return f"{len(calls):,} | {failed} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f}"


def main(repository_root: Path, items: int | None) -> None:
    items = items or ITEMS
    mnist = load_mnist()
    pixels = (mnist.train.images * 255).round().astype(np.uint8)
    queries = (mnist.test.images * 255).round().astype(np.uint8)

    with tempfile.TemporaryDirectory() as data_dir:
        with gateway_process(repository_root, "--gallery", "none", data_dir=Path(data_dir)) as (target, _), grpc.insecure_channel(target) as channel:
            stub = search_pb2_grpc.SearchStub(channel)
            stub.CreateCollection(search_pb2.CreateCollectionRequest(
                name=COLLECTION, keep_images=True, model=common_pb2.ModelRef(name="autoencoder", version=1)))
            began = time.perf_counter()
            for start in range(0, items, ADD_BATCH):
                stub.AddItems(search_pb2.AddItemsRequest(collection=COLLECTION, items=[
                    search_pb2.Item(id=f"item-{i}", image=image(pixels[i % len(pixels)]), label=int(mnist.train.labels[i % len(pixels)]))
                    for i in range(start, min(start + ADD_BATCH, items))
                ]), timeout=60)
            print(f"{items:,} items added in {time.perf_counter() - began:.0f} s (autoencoder v1, {ADD_BATCH} a call)\n")

            baseline = Clients(stub, queries, pixels[:0])
            baseline.run()
            time.sleep(BASELINE_SECONDS)
            baseline.end()

            during = Clients(stub, queries, pixels[: 1 << 20])
            during.run()
            began = time.perf_counter()
            started = stub.ReindexCollection(search_pb2.ReindexCollectionRequest(collection=COLLECTION))
            while (stats := stub.GetIndexStats(search_pb2.GetIndexStatsRequest(collection=COLLECTION))).HasField("reindex"):
                if stats.reindex.error:
                    raise SystemExit(f"the reindex failed: {stats.reindex.error}")
                time.sleep(0.2)
            took = time.perf_counter() - began
            during.end()
            written = sum(code == grpc.StatusCode.OK for code, _ in during.writes)
            print(f"Reindex autoencoder v1 -> v{started.reindex.model.version}: {took:.1f} s ({items / took:,.0f} items/s); "
                  f"the collection holds {stats.items:,} items at the end (expected {items + written:,}: every item and every acknowledged write), "
                  f"model version {stats.model.version}\n")
            print("| calls | phase | calls made | failed | p50 ms | p99 ms |\n|---|---|---|---|---|---|")
            print(f"| Search, {SEARCHERS} clients | before | {summary(baseline.searches)} |")
            print(f"| Search, {SEARCHERS} clients | during the reindex | {summary(during.searches)} |")
            print(f"| AddItems, 1 item every {WRITE_EVERY:g} s | during the reindex | {summary(during.writes)} |")
