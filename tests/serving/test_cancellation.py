"""Work stops when nobody waits: label propagation past its deadline, or cancelled, stops within a step."""
import asyncio
import time

import grpc
import numpy as np
import pytest

from latentserve.v1 import search_pb2, search_pb2_grpc
from serving.index import NewItem
from serving.label_propagation import Stopped, knn_graph, propagate
from serving.search import Search

ITEMS = 40_000  # random 32-d codes: an exact kNN graph over them takes seconds on 2 cores


def test_propagation_raises_stopped_when_asked():
    codes = np.random.default_rng(0).standard_normal((5000, 8)).astype(np.float32)
    with pytest.raises(Stopped):
        knn_graph(codes, 10, stop=lambda: True)
    graph = knn_graph(codes, 10)
    with pytest.raises(Stopped):
        propagate(graph, np.array([0, 1]), np.array([0, 1]), 2, stop=lambda: True)


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    """A gateway whose index holds ITEMS random codes (put straight into the index, no encoding)."""
    from tests.conftest import RunningGateway

    gateway = RunningGateway(data_dir=tmp_path_factory.mktemp("data"), gallery="none").start()
    index = gateway.server.capability(Search).index
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((ITEMS, index.binding.code_dim)).astype(np.float32)
    bits = np.packbits(codes > 0, axis=1)
    index.add([NewItem(f"item-{i}", codes[i], bits[i]) for i in range(ITEMS)])
    yield gateway
    gateway.stop()


def busy_cpu_seconds(seconds: float) -> float:
    """CPU this process spends over the next `seconds` (the gateway runs in it)."""
    before = time.process_time()
    time.sleep(seconds)
    return time.process_time() - before


def test_propagation_past_its_deadline_ends_and_stops_computing(crowded):
    request = search_pb2.PropagateLabelsRequest(labels={"item-0": 0, "item-1": 1})
    with crowded.channel() as channel, pytest.raises(grpc.RpcError) as raised:
        list(search_pb2_grpc.SearchStub(channel).PropagateLabels(request, timeout=0.3))
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    time.sleep(1.0)  # the deadline plus one step, with room for a loaded machine (bench stopping times it)
    assert busy_cpu_seconds(1.0) < 0.3  # a graph still being built would keep a core busy


def test_a_cancelled_propagation_stops_computing(crowded):
    search = crowded.server.capability(Search)
    task = asyncio.run_coroutine_threadsafe(search.propagate_labels(search.index, {"item-0": 0, "item-1": 1}, 10, "harmonic", ITEMS), crowded.loop)
    time.sleep(0.5)
    assert busy_cpu_seconds(0.5) > 0.3  # it is computing
    task.cancel()
    time.sleep(1.0)  # one step, with room for a loaded machine
    assert busy_cpu_seconds(1.0) < 0.3
