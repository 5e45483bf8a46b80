"""`latentserve bench search-scale`: recall and speed of the search index over the shipped encoder's codes
of `--items` images (default 1,000,000): FAISS on its own, filtered search through CodeIndex, and
SearchBatch through the gateway.

Items are MNIST training images (item i from training image i mod their number) under a random affine transform (rotation
+-15 degrees, scale 0.9-1.1, shift +-2 px, shear +-0.15) and a light elastic field, made on the fly from a
fixed seed and encoded by the newest version of the index model through onnxruntime; the 1,000 queries
are MNIST test images distorted the same way from another seed.

FAISS runs on its own with 2 threads, on the index types CodeIndex builds: exact is IndexIDMap2 over
IndexFlatL2 (codes) or IndexBinaryFlat (packed bits); IVF is IndexIVFFlat or IndexBinaryIVF, trained as
CodeIndex trains them, on the first TRAIN_PER_LIST x nlist items; HNSW is IndexHNSWFlat or IndexBinaryHNSW
(m 16, efConstruction HNSW_EF_CONSTRUCTION) under IndexIDMap2, at several ef_search. Recall@10 is against exact search: in L2
the share of the exact top 10 that comes back; in Hamming, where many items tie at the 10th distance so that
the exact top 10 is one arbitrary choice among them, the share of returned hits no farther than the exact
10th distance. Queries/s is the median of passes repeated for about CELL_SECONDS (a pass: SINGLE_QUERIES
one-query calls at batch 1, all the queries at batch 64). Memory per item is the growth of this process's
resident memory while building (which also holds IndexIDMap2's reverse id map) and the size of the index
as FAISS serializes it (codes, ids, centroids).

Filtered search runs through CodeIndex (SQLite + FAISS), each item stored with its source image's label and
metadata {"shard": str(i mod 100)}. End to end, a gateway serves as its default collection a CodeIndex made
here beforehand (exact; IVF with 1,024 lists and 8 probes; HNSW with m 16 and ef_search 64: the gateway's
defaults), and CLIENTS concurrent clients send SearchBatch of 64 codes; "gateway CPU ms / call" is the
gateway process's CPU time per call. With `--faiss-only` (the 10,000,000-item run) only FAISS's own figures
are measured.
"""
import asyncio
import ctypes
import itertools
import math
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import grpc
import numpy as np
import onnxruntime
import torch
import torch.nn.functional as F

from benchmarks.gateway import drive, gateway_process, process_cpu_seconds
from latentserve import repository
from latentserve.contract import BINARY_CODE, CODE, ENCODE
from latentserve.datasets import load_mnist
from latentserve.v1 import common_pb2, search_pb2, search_pb2_grpc
from serving.filters import parse
from serving.index import HNSW_EF_CONSTRUCTION, TRAIN_PER_LIST, Binding, CodeIndex, IndexOptions, NewItem
from serving.settings import Settings

THREADS = 2  # torch, onnxruntime and FAISS
ENCODE_BATCH = 4096
ELASTIC_PIXELS = 1.0  # standard deviation of the elastic field's 4 x 4 control points
ITEM_SEED, QUERY_SEED = 0, 1
ITEMS = 1_000_000  # without --items
QUERIES = 1000
K = 10
NLIST = 1024
PROBES = (1, 2, 4, 8, 16)
HNSW_M = 16
EF_SEARCHES = (16, 32, 64, 128)
BATCH = 64
SINGLE_QUERIES = 300  # one-query calls in a batch-1 pass
CELL_SECONDS = 5.0  # time spent on one figure: passes repeat while another fits
ADD_BATCH = 10_000  # items in one CodeIndex.add
SHARDS = 100
FILTERED_QUERIES = 300  # at most, one at a time, within FILTERED_SECONDS
FILTERED_SECONDS = 10.0
CLIENTS = 4
GATEWAY_SECONDS = 10.0
SPACES = ("L2", "Hamming")
# collections as the gateway makes them with the default settings, for the filtered and end-to-end runs
SERVED = (IndexOptions(), IndexOptions(kind="ivf", nlist=NLIST, nprobe=8), IndexOptions(kind="hnsw", m=HNSW_M, ef_search=64))


@dataclass(frozen=True)
class Codes:
    values: np.ndarray  # float32 (n, code_dim)
    bits: np.ndarray  # uint8 (n, num_bits / 8), packed as the gateway packs them
    labels: np.ndarray  # the source image's digit

    def vectors(self, space: str) -> np.ndarray:
        return self.values if space == "L2" else self.bits


@dataclass(frozen=True)
class Row:
    """One index in one space: FAISS's own figures."""

    name: str
    recall: float
    per_s_single: float
    per_s_batch: float
    build_s: float
    resident_bytes: float  # per item
    faiss_bytes: float  # per item


def distort(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """(n, 1, 28, 28) images under a random affine transform and a light elastic field."""
    n = len(images)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand((n, *shape), generator=generator)

    angle, scale, shear = uniform(-15, 15) * math.pi / 180, uniform(0.9, 1.1), uniform(-0.15, 0.15)
    shift = uniform(-2, 2, 2) * 2 / 28  # pixels to grid_sample's [-1, 1] coordinates
    rotation = torch.stack([torch.stack([angle.cos(), -angle.sin()], 1), torch.stack([angle.sin(), angle.cos()], 1)], 1)
    shearing = torch.eye(2).repeat(n, 1, 1)
    shearing[:, 0, 1] = shear
    theta = torch.cat([rotation @ shearing / scale[:, None, None], shift[:, :, None]], 2)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    field = torch.randn((n, 2, 4, 4), generator=generator) * ELASTIC_PIXELS * 2 / 28
    grid = grid + F.interpolate(field, size=(28, 28), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    return F.grid_sample(images, grid, align_corners=False).clamp(0, 1)


def encoded(session: onnxruntime.InferenceSession, images: np.ndarray, labels: np.ndarray, count: int, seed: int) -> Codes:
    """Codes of `count` distorted images, the i-th from images[i mod len(images)]."""
    generator = torch.Generator().manual_seed(seed)
    values, bits = [], []
    for start in range(0, count, ENCODE_BATCH):
        sources = torch.from_numpy(images[np.arange(start, min(start + ENCODE_BATCH, count)) % len(images), None])
        code, binary = session.run([CODE, BINARY_CODE], {"image": distort(sources, generator).numpy()})
        values.append(code)
        bits.append(np.packbits(binary, axis=1))
    return Codes(np.concatenate(values), np.concatenate(bits), labels[np.arange(count) % len(labels)])


def encoder(repository_root: Path) -> tuple[onnxruntime.InferenceSession, Binding]:
    """The newest version of the index model, and the binding of a collection of its codes."""
    model = Settings().index_model
    entry = next(e for e in repository.read_repository(repository_root).values() if e.model == model and e.capability == ENCODE)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    version = entry.versions[0]
    session = onnxruntime.InferenceSession(str(entry.version_path(version) / repository.ONNX_FILE), options, providers=["CPUExecutionProvider"])
    dims = {output.name: output.dims[0] for output in entry.outputs}
    return session, Binding(model, version, dims[CODE], dims[BINARY_CODE])


def resident_bytes() -> int:
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed memory back first, so that growth is what is held
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def new_index(space: str, dim: int, options: IndexOptions):
    """An empty FAISS index of the type CodeIndex builds for `options` (`dim`: floats, or bytes of bits)."""
    bits = 8 * dim
    if options.kind == "ivf":
        if space == "L2":
            return faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, options.nlist, faiss.METRIC_L2)
        return faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(bits), bits, options.nlist)
    if options.kind == "hnsw":
        graph = faiss.IndexHNSWFlat(dim, options.m) if space == "L2" else faiss.IndexBinaryHNSW(bits, options.m)
        graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        return faiss.IndexIDMap2(graph) if space == "L2" else faiss.IndexBinaryIDMap2(graph)
    return faiss.IndexIDMap2(faiss.IndexFlatL2(dim)) if space == "L2" else faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(bits))


def build(space: str, vectors: np.ndarray, options: IndexOptions):
    """(index, seconds to train and add, resident bytes per item, serialized bytes per item)."""
    before = resident_bytes()
    start = time.perf_counter()
    index = new_index(space, vectors.shape[1], options)
    if options.kind == "ivf":
        index.train(vectors[: TRAIN_PER_LIST * options.nlist])
    index.add_with_ids(vectors, np.arange(1, len(vectors) + 1))  # ids are SQLite rows, from 1
    seconds = time.perf_counter() - start
    grown = resident_bytes() - before
    serialized = faiss.serialize_index(index) if space == "L2" else faiss.serialize_index_binary(index)
    return index, seconds, grown / len(vectors), serialized.nbytes / len(vectors)


def recall(space: str, exact: tuple[np.ndarray, np.ndarray], found: tuple[np.ndarray, np.ndarray]) -> float:
    (exact_distances, exact_ids), (distances, ids) = exact, found
    if space == "Hamming":  # ties: a hit as near as the exact 10th counts
        return float(((distances <= exact_distances[:, -1:]) & (ids >= 0)).mean())
    return float(np.mean([len(set(f) & set(e)) / K for f, e in zip(ids, exact_ids)]))


def queries_per_s(search, queries: np.ndarray, batch: int) -> float:
    """Median over passes of `search` through the queries in batches of `batch` (SINGLE_QUERIES of them at 1)."""
    queries = queries[:SINGLE_QUERIES] if batch == 1 else queries
    rates, spent = [], 0.0
    while not rates or spent * (len(rates) + 1) / len(rates) <= CELL_SECONDS:
        start = time.perf_counter()
        for i in range(0, len(queries), batch):
            search(queries[i : i + batch])
        elapsed = time.perf_counter() - start
        rates.append(len(queries) / elapsed)
        spent += elapsed
    return float(np.median(rates))


def index_name(options: IndexOptions) -> str:
    if options.kind == "ivf":
        return f"IVF {options.nlist}, nprobe {options.nprobe}"
    return f"HNSW {options.m}, ef_search {options.ef_search}" if options.kind == "hnsw" else "exact"


def faiss_rows(space: str, items: Codes, queries: Codes) -> list[Row]:
    """Exact first, then IVF at each of PROBES, then HNSW at each of EF_SEARCHES."""
    vectors, targets = items.vectors(space), queries.vectors(space)
    families = [
        [IndexOptions()],
        [IndexOptions(kind="ivf", nlist=NLIST, nprobe=nprobe) for nprobe in PROBES],
        [IndexOptions(kind="hnsw", m=HNSW_M, ef_search=ef) for ef in EF_SEARCHES],
    ]
    rows = []
    for family in families:
        index, seconds, resident, serialized = build(space, vectors, family[0])
        for options in family:
            if options.kind == "ivf":
                index.nprobe = options.nprobe
            params = faiss.SearchParametersHNSW(efSearch=options.ef_search) if options.kind == "hnsw" else None

            def search(q, index=index, params=params):
                return index.search(q, K, params=params)

            found = search(targets)
            if options.kind == "exact":
                exact = found
            rows.append(Row(
                index_name(options), recall(space, exact, found), queries_per_s(search, targets, 1), queries_per_s(search, targets, BATCH),
                seconds, resident, serialized,
            ))
            print(f"  {space} {rows[-1].name}: recall {rows[-1].recall:.4f}, {rows[-1].per_s_batch:,.0f} queries/s at batch {BATCH}", flush=True)
        del index
    return rows


def print_space(space: str, rows: list[Row]) -> None:
    exact = rows[0]
    print(f"\n{space} ({'float32 codes, squared L2' if space == 'L2' else 'packed bits, Hamming'}), FAISS alone, {THREADS} threads\n")
    print(f"| index | recall@10 | queries/s batch 1 (x exact) | queries/s batch {BATCH} (x exact) | build s | resident bytes/item | FAISS bytes/item |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.name} | {r.recall:.4f} | {r.per_s_single:,.0f} ({r.per_s_single / exact.per_s_single:.0f}x) | "
              f"{r.per_s_batch:,.0f} ({r.per_s_batch / exact.per_s_batch:.0f}x) | {r.build_s:.2f} | {r.resident_bytes:.0f} | {r.faiss_bytes:.0f} |")


def fill(directory: Path, binding: Binding, options: IndexOptions, items: Codes) -> tuple[float, float]:
    """(seconds, growth of resident bytes per item) to add every item to a new CodeIndex in `directory`,
    ADD_BATCH at a time; left closed."""
    before = resident_bytes()
    index = CodeIndex(directory, binding, options)
    seconds = add_items(index, items, ADD_BATCH)
    grown = resident_bytes() - before
    index.close()
    return seconds, grown / len(items.labels)


def add_items(index, items: Codes, batch: int) -> float:
    """Seconds to add every item to `index` (a CodeIndex or MilvusIndex), `batch` a call: item i has id
    item-<i>, its source image's label and metadata {"shard": str(i mod SHARDS)}."""
    start = time.perf_counter()
    for first in range(0, len(items.labels), batch):
        index.add([
            NewItem(f"item-{i:07d}", items.values[i], items.bits[i], int(items.labels[i]), {"shard": str(i % SHARDS)})
            for i in range(first, min(first + batch, len(items.labels)))
        ])
    return time.perf_counter() - start


def latencies_ms(index: CodeIndex, queries: np.ndarray, hashed: bool, where) -> np.ndarray:
    """One-query CodeIndex.search calls, up to FILTERED_QUERIES of them within FILTERED_SECONDS."""
    latencies, stop_at = [], time.perf_counter() + FILTERED_SECONDS
    for query in queries[:FILTERED_QUERIES]:
        start = time.perf_counter()
        index.search(query[None], hashed, K, [None], where)
        latencies.append(time.perf_counter() - start)
        if time.perf_counter() > stop_at:
            break
    return np.asarray(latencies) * 1000


def print_filtered(directories: dict[str, Path], items: Codes, queries: Codes) -> None:
    settings = Settings()
    shards = np.arange(len(items.labels)) % SHARDS
    filters = [("", 1.0), ('metadata["shard"] == "7"', np.mean(shards == 7)), ("label in [0, 1, 2, 3, 4]", np.mean(items.labels < 5))]
    print(f"\nFiltered search through CodeIndex.search, batch 1, k={K}; the first query of a filter selects its rows in the "
          f"item table, the next ones reuse them until a write\n")
    print("| index | space | filter | selects | queries | first ms | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|")
    for name, directory in directories.items():
        index = CodeIndex(directory, None)
        for space, (text, share) in itertools.product(SPACES, filters):
            where = parse(text, settings.max_filter_bytes, settings.max_filter_values, settings.max_filter_depth)
            ms = latencies_ms(index, queries.vectors(space), space == "Hamming", where)
            print(f"| {name} | {space} | {text or '(none)'} | {share:.1%} | {len(ms)} | {ms[0]:.2f} | {np.percentile(ms, 50):.2f} | "
                  f"{np.percentile(ms, 99):.2f} |", flush=True)
        index.close()


async def gateway_per_s(target: str, queries: Codes, num_bits: int, hashed: bool) -> float:
    """Queries/s of CLIENTS concurrent clients sending SearchBatch of BATCH codes, for GATEWAY_SECONDS."""
    space = search_pb2.SPACE_HASH if hashed else search_pb2.SPACE_CODE
    requests = itertools.cycle([
        search_pb2.SearchBatchRequest(k=K, space=space, queries=[
            search_pb2.Query(code=common_pb2.Code(values=values, bits=bits.tobytes(), num_bits=num_bits))
            for values, bits in zip(queries.values[i : i + BATCH], queries.bits[i : i + BATCH])
        ])
        for i in range(0, len(queries.labels) - BATCH + 1, BATCH)
    ])
    async with grpc.aio.insecure_channel(target) as channel:
        stub = search_pb2_grpc.SearchStub(channel)
        await stub.SearchBatch(next(requests))  # the channel connected
        latencies, elapsed = await drive(lambda: stub.SearchBatch(next(requests)), CLIENTS, GATEWAY_SECONDS)
    return len(latencies) * BATCH / elapsed


def print_end_to_end(repository_root: Path, data_dirs: dict[str, Path], faiss_per_s: dict[tuple[str, str], float], queries: Codes, num_bits: int) -> None:
    print(f"\nEnd to end: SearchBatch of {BATCH} codes, k={K}, {CLIENTS} concurrent clients, vs FAISS alone at batch {BATCH}\n")
    print("| index | space | gateway queries/s | FAISS queries/s | gateway / FAISS | gateway CPU ms / call |\n|---|---|---|---|---|---|")
    for name, data_dir in data_dirs.items():
        with gateway_process(repository_root, "--gallery", "none", data_dir=data_dir) as (target, pid):
            for space in SPACES:
                cpu_before = process_cpu_seconds(pid)
                ours, theirs = asyncio.run(gateway_per_s(target, queries, num_bits, space == "Hamming")), faiss_per_s[name, space]
                calls = ours * GATEWAY_SECONDS / BATCH
                cpu_ms = (process_cpu_seconds(pid) - cpu_before) * 1000 / calls
                print(f"| {name} | {space} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.0%} | {cpu_ms:.1f} |", flush=True)


def workload(repository_root: Path, items: int) -> tuple[Binding, Codes, Codes]:
    """The binding of the index model's codes, `items` distorted training images' codes and the QUERIES
    test images' codes, with torch, onnxruntime and FAISS on THREADS threads."""
    torch.set_num_threads(THREADS)
    faiss.omp_set_num_threads(THREADS)
    session, binding = encoder(repository_root)
    mnist = load_mnist()
    stored = encoded(session, mnist.train.images, mnist.train.labels, items, ITEM_SEED)
    return binding, stored, encoded(session, mnist.test.images, mnist.test.labels, QUERIES, QUERY_SEED)


def current_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()


def main(repository_root: Path, items: int | None, faiss_only: bool = False) -> None:
    items = items or ITEMS
    began = time.perf_counter()
    binding, stored, queries = workload(repository_root, items)
    commit = current_commit()
    print(f"{items:,} items, {QUERIES:,} queries of {binding.model} v{binding.version} ({binding.code_dim} floats, {binding.num_bits} bits); "
          f"made and encoded in {time.perf_counter() - began:.0f} s; {os.cpu_count()} cores; commit {commit}\n", flush=True)

    rows = {space: faiss_rows(space, stored, queries) for space in SPACES}
    for space in SPACES:
        print_space(space, rows[space])
    if faiss_only:
        print(f"\ntotal {time.perf_counter() - began:.0f} s")
        return

    with tempfile.TemporaryDirectory() as scratch:
        data_dirs = {index_name(options): Path(scratch) / options.kind for options in SERVED}
        print()
        for options in SERVED:
            name = index_name(options)
            seconds, resident = fill(data_dirs[name] / "index", binding, options, stored)  # data_dir/index: the default collection
            print(f"CodeIndex ({name}) of {items:,} items built in {seconds:.0f} s ({items / seconds:,.0f} items/s, {ADD_BATCH:,} a call), "
                  f"resident {resident:.0f} bytes/item", flush=True)
        print_filtered({name: data_dir / "index" for name, data_dir in data_dirs.items()}, stored, queries)
        faiss_per_s = {(r.name, space): r.per_s_batch for space in SPACES for r in rows[space]}
        print_end_to_end(repository_root, data_dirs, faiss_per_s, queries, binding.num_bits)
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
