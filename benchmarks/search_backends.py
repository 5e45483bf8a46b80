"""`latentserve bench search-backends`: the same search workload on the embedded backend (FAISS + SQLite)
and on Milvus Lite, through the collection API the gateway calls (serving.collections.Collections and
serving.milvus_index.MilvusCollections), so the figures are the backends' own, without gRPC.

`--items` (default 100,000) distorted MNIST images, encoded as `bench search-scale` makes them, go into an
exact collection on each backend (Milvus Lite searches every row exactly whatever the index), each item with
its source image's label and metadata {"shard": str(i mod 100)}, ADD_BATCH a call. Then, on each: searches
by code at batch 1 (SINGLE_QUERIES one-query calls) and at batch 64 (all the queries), in both spaces;
filtered searches at 1% and 51% selectivity, one query a call; GetItems of 100 ids; and a delete by a 1%
filter. Queries/s and latencies are medians over passes repeated for about CELL_SECONDS.
"""
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.search_scale import BATCH, CELL_SECONDS, QUERIES, SINGLE_QUERIES, add_items, current_commit, workload
from serving.collections import Collections
from serving.filters import parse
from serving.index import IndexOptions
from serving.milvus_index import MilvusCollections

ITEMS = 100_000  # without --items
ADD_BATCH = 1000
K = 10
NAME = "bench"
FILTERS = ('metadata["shard"] == "7"', "label in [0, 1, 2, 3, 4]")
GOT_IDS = 100


def median_ms(work) -> float:
    """Median milliseconds of `work()` over calls repeated for about CELL_SECONDS."""
    spent = []
    while sum(spent) < CELL_SECONDS:
        start = time.perf_counter()
        work()
        spent.append(time.perf_counter() - start)
    return float(np.median(spent)) * 1000


def measure(collections, binding, items, queries) -> dict[str, str]:
    """The workload on one backend's collections: each figure as printed."""
    figures = {}
    index = collections.create(NAME, binding, IndexOptions())
    seconds = add_items(index, items, ADD_BATCH)
    figures["add, items/s"] = f"{len(items.labels) / seconds:,.0f}"
    for space in ("L2", "Hamming"):
        vectors, hashed = queries.vectors(space), space == "Hamming"
        single = median_ms(lambda: [index.search(v[None], hashed, K, [None]) for v in vectors[:SINGLE_QUERIES]])
        batched = median_ms(lambda: [index.search(vectors[i : i + BATCH], hashed, K, [None] * BATCH) for i in range(0, QUERIES - BATCH + 1, BATCH)])
        figures[f"{space} search, queries/s at batch 1"] = f"{SINGLE_QUERIES / single * 1000:,.0f}"
        figures[f"{space} search, queries/s at batch {BATCH}"] = f"{(QUERIES // BATCH) * BATCH / batched * 1000:,.0f}"
    for text in FILTERS:
        where = parse(text, 4096, 1000, 32)
        figures[f"L2 search where {text}, ms a query"] = f"{median_ms(lambda: index.search(queries.values[:1], False, K, [None], where)):.2f}"
    ids = [f"item-{i:07d}" for i in range(0, len(items.labels), len(items.labels) // GOT_IDS)][:GOT_IDS]
    figures[f"get {GOT_IDS} items by id, ms"] = f"{median_ms(lambda: index.get_items(ids)):.2f}"
    start = time.perf_counter()
    deleted = index.delete_where(parse(FILTERS[0], 4096, 1000, 32))
    figures[f"delete where {FILTERS[0]}, ms"] = f"{(time.perf_counter() - start) * 1000:,.0f} ({deleted:,} items)"
    return figures


def main(repository_root: Path, items: int | None) -> None:
    items = items or ITEMS
    binding, stored, queries = workload(repository_root, items)
    commit = current_commit()
    print(f"{items:,} items of {binding.model} v{binding.version} codes, an exact collection on each backend; {os.cpu_count()} cores; commit {commit}\n", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for backend, collections in (("embedded (FAISS + SQLite)", Collections(Path(scratch) / "embedded")),
                                     ("Milvus Lite", MilvusCollections(str(Path(scratch) / "lite" / "milvus.db")))):
            collections.open(binding)
            try:
                results[backend] = measure(collections, binding, stored, queries)
            finally:
                collections.close()
            print(f"  {backend} done", flush=True)
    backends = list(results)
    print(f"\n| figure | {' | '.join(backends)} |\n|---|{'---|' * len(backends)}")
    for figure in results[backends[0]]:
        print(f"| {figure} | {' | '.join(results[b][figure] for b in backends)} |")
