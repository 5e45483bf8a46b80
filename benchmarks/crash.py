"""`latentserve bench crash`: kill the gateway with SIGKILL while a client writes, restart it, and check that
nothing acknowledged was lost and nothing was half done.

One data directory serves every trial, so each restart also reopens what the earlier kills left. In each
trial a client sends AddItems batches (1 to 8 new items) and DeleteItems batches (up to 8 stored ids) until
the gateway dies at a random moment (deleting rather than adding while over KEEP items); after the restart
the stored ids (every hit of a Search of max_k) must hold every acknowledged add, none of the acknowledged
deletes, and the call in flight at the kill wholly or not at all.
"""
import os
import random
import signal
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from benchmarks.gateway import gateway_process
from latentserve.v1 import common_pb2, search_pb2, search_pb2_grpc

KEEP = 300  # items, so that one Search of max_k (1000) lists them all
IMAGE = common_pb2.Image(tensor=common_pb2.Tensor(shape=[28, 28], dtype=common_pb2.DATA_TYPE_UINT8, data=np.zeros(784, np.uint8).tobytes()))


def stored_ids(stub: search_pb2_grpc.SearchStub) -> set[str]:
    stats = stub.GetIndexStats(search_pb2.GetIndexStatsRequest())
    hits = stub.Search(search_pb2.SearchRequest(code=common_pb2.Code(values=[0.0] * stats.code_dim), k=1000)).hits
    assert len(hits) == stats.items, "more items than one Search lists"
    return {hit.id for hit in hits}


class Writer(threading.Thread):
    """Adds and deletes until a call fails (the gateway died); `stored` is what was acknowledged, `pending`
    the ids of the call that was in flight, `added` and `deleted` the acknowledged items."""

    def __init__(self, stub: search_pb2_grpc.SearchStub, stored: set[str], trial: int, rng: random.Random):
        super().__init__()
        self.stub, self.stored, self.trial, self.rng = stub, stored, trial, rng
        self.pending: list[str] = []
        self.calls = self.added = self.deleted = 0

    def run(self) -> None:
        try:
            while True:
                if self.stored and (len(self.stored) > KEEP or self.rng.random() < 0.3):
                    ids = self.rng.sample(sorted(self.stored), min(len(self.stored), self.rng.randint(1, 8)))
                    self.pending = ids
                    self.stub.DeleteItems(search_pb2.DeleteItemsRequest(ids=ids), timeout=30)
                    self.stored.difference_update(ids)
                    self.deleted += len(ids)
                else:
                    ids = [f"t{self.trial}-{self.calls}-{i}" for i in range(self.rng.randint(1, 8))]
                    self.pending = ids
                    self.stub.AddItems(search_pb2.AddItemsRequest(items=[search_pb2.Item(id=i, image=IMAGE) for i in ids]), timeout=30)
                    self.stored.update(ids)
                    self.added += len(ids)
                self.pending = []
                self.calls += 1
        except grpc.RpcError:
            return


def main(repository_root: Path, trials: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    stored: set[str] = set()
    counts = {"acknowledged adds": 0, "acknowledged deletes": 0, "killed mid-call": 0, "lost": 0, "resurrected": 0, "partial": 0}
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as data_dir:
        for trial in range(trials + 1):  # the last start only checks what the last kill left
            with gateway_process(repository_root, "--gallery", "none", data_dir=Path(data_dir)) as (target, pid), \
                    grpc.insecure_channel(target) as channel:
                stub = search_pb2_grpc.SearchStub(channel)
                found = stored_ids(stub)
                if trial:
                    in_flight = set(writer.pending)  # it may have committed or not, but wholly
                    counts["killed mid-call"] += bool(in_flight)
                    counts["partial"] += 0 < len(found & in_flight) < len(in_flight)
                    counts["lost"] += len(stored - found - in_flight)
                    counts["resurrected"] += len(found - stored - in_flight)
                stored = found
                if trial == trials:
                    break
                writer = Writer(stub, stored, trial, rng)
                writer.start()
                time.sleep(rng.uniform(0.05, 1.0))
                os.kill(pid, signal.SIGKILL)
                writer.join()
                counts["acknowledged adds"] += writer.added
                counts["acknowledged deletes"] += writer.deleted
    print(f"{trials} kills in {time.perf_counter() - began:.0f} s (SIGKILL at 0.05 to 1 s of writing; one data directory; seed {seed})\n")
    print("| " + " | ".join(counts) + " |")
    print("|" + "---|" * len(counts))
    print("| " + " | ".join(str(n) for n in counts.values()) + " |")
