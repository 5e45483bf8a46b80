"""Dynamic batching in the embedded runtime: queued requests merge into one onnxruntime run, bit for bit;
and inline runs, on the calling thread, of requests the model's recent runs say are quick.

Most tests hold the runtime's one worker in a run (a session that records each run and waits until
released), queue requests behind it, then release it and look at the runs that followed.
"""
import asyncio
import threading
import time

import numpy as np
import pytest
from prometheus_client import REGISTRY

from latentserve.v1 import encoder_pb2, encoder_pb2_grpc
from serving.errors import DeadlineExceeded, Unavailable
from serving.runtime.embedded import EmbeddedRuntime
from tests.conftest import MODEL_REPOSITORY, tensor_batch


class Recorder:
    """Wraps a session: records the inputs of each run, holds runs while `release` is clear, and fails a
    run holding a NaN (a bad request whose bad rows only onnxruntime's caller can see)."""

    def __init__(self, session):
        self.session, self.runs, self.threads = session, [], []
        self.running, self.release = threading.Event(), threading.Event()
        self.release.set()
        self.delay = 0.0  # seconds each run takes beyond the session's own

    def run(self, names, inputs):
        self.runs.append(inputs)
        self.threads.append(threading.get_ident())
        self.running.set()
        assert self.release.wait(30)
        time.sleep(self.delay)
        if any(np.isnan(array).any() for array in inputs.values() if array.dtype.kind == "f"):
            raise ValueError("a NaN")
        return self.session.run(names, inputs)

    @property
    def rows(self) -> list[int]:
        return [len(next(iter(inputs.values()))) for inputs in self.runs]


@pytest.fixture
def make_runtime():
    """`make_runtime(name, **settings)`: an EmbeddedRuntime with one worker, its entry `name` and that entry's
    newest version wrapped in a Recorder; each is closed when the test ends."""
    made = []

    def make(name: str, **settings):
        made.append(EmbeddedRuntime(MODEL_REPOSITORY, workers=1, **{"inline_max_ms": 0, **settings}))
        entry = made[-1].entries()[name]
        key = (name, entry.versions[0])
        recorder = made[-1]._sessions[key] = Recorder(made[-1]._sessions[key])
        return made[-1], entry, recorder

    yield make
    for each in made:
        asyncio.run(each.close())


def images(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(seed).random((count, 1, 28, 28), dtype=np.float32)}


def generator_inputs(count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"latent": rng.standard_normal((count, 64), dtype=np.float32), "label": rng.integers(0, 10, (count, 1))}


async def queued_behind_a_held_run(runtime, entry, recorder, requests: list[dict], **infer) -> list[asyncio.Task]:
    """Start a one-image run that holds the worker, then queue `requests` behind it; the first task is the
    holding run's. Nothing runs past the held run until `recorder.release` is set."""
    recorder.release.clear()
    held = asyncio.create_task(runtime.infer(entry, entry.versions[0], {name: array[:1] for name, array in requests[0].items()}))
    assert await asyncio.to_thread(recorder.running.wait, 30)
    tasks = [asyncio.create_task(runtime.infer(entry, entry.versions[0], inputs, **infer)) for inputs in requests]
    await asyncio.sleep(0)  # each task queues its request before its first await
    return [held, *tasks]


@pytest.mark.parametrize("name, make", [
    ("autoencoder_encoder", images), ("ssgan_classifier", images), ("acgan_generator", generator_inputs),
])
def test_merged_requests_get_what_each_would_get_alone_bit_for_bit(make_runtime, name, make):
    runtime, entry, recorder = make_runtime(name)
    requests = [make(count, seed) for seed, count in enumerate([1, 3, 5, 2, 7])]

    async def scenario():
        tasks = await queued_behind_a_held_run(runtime, entry, recorder, requests)
        recorder.release.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())[1:]
    assert recorder.rows == [1, 18]
    names = [output.name for output in entry.outputs]
    for inputs, result in zip(requests, results):
        for name, alone in zip(names, recorder.session.run(names, inputs)):
            assert result[name].shape == alone.shape and np.array_equal(result[name], alone)


def test_an_error_stays_with_its_request(make_runtime):
    runtime, entry, recorder = make_runtime("autoencoder_encoder")
    wrong_shape = {"image": np.zeros((2, 1, 27, 27), np.float32)}
    with_nan = images(2, 9)
    with_nan["image"][1, 0, 3, 3] = np.nan
    requests = [images(2, 0), wrong_shape, images(3, 1), with_nan, images(1, 2)]

    async def scenario():
        tasks = await queued_behind_a_held_run(runtime, entry, recorder, requests)
        recorder.release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(scenario())[1:]
    assert "invalid dimensions" in str(results[1]) and str(results[3]) == "a NaN"
    # The wrong shape queues apart and runs alone; the merged run with the NaN fails, so each of its runs alone
    assert recorder.rows == [1, 8, 2, 3, 2, 1, 2]
    for inputs, result in zip([requests[0], requests[2], requests[4]], [results[0], results[2], results[4]]):
        assert np.array_equal(result["code"], recorder.session.run(["code"], inputs)[0])


def test_a_cancelled_request_is_dropped_from_the_queue_and_never_runs(make_runtime):
    runtime, entry, recorder = make_runtime("autoencoder_encoder")
    requests = [images(2, 0), images(3, 1), images(4, 2)]

    async def scenario():
        held, first, cancelled, last = await queued_behind_a_held_run(runtime, entry, recorder, requests)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        recorder.release.set()
        await asyncio.gather(held, first, last)

    asyncio.run(scenario())
    assert recorder.rows == [1, 6]
    assert np.array_equal(recorder.runs[1]["image"], np.concatenate([requests[0]["image"], requests[2]["image"]]))


def test_a_queued_request_past_its_deadline_is_answered_at_once_and_never_runs(make_runtime):
    runtime, entry, recorder = make_runtime("autoencoder_encoder")
    requests = [images(2, 0), images(3, 1)]

    async def scenario():
        held, late = await queued_behind_a_held_run(runtime, entry, recorder, requests[:1], timeout=0.05)
        with pytest.raises(DeadlineExceeded):
            await late  # while the worker is still held
        on_time = asyncio.create_task(runtime.infer(entry, entry.versions[0], requests[1]))
        await asyncio.sleep(0)
        recorder.release.set()
        await asyncio.gather(held, on_time)

    asyncio.run(scenario())
    assert recorder.rows == [1, 3]


def test_a_worker_drops_a_request_past_its_deadline_while_the_event_loop_is_busy(make_runtime):
    runtime, entry, recorder = make_runtime("autoencoder_encoder")
    requests = [images(2, 0), images(3, 1)]

    async def scenario():
        held, late = await queued_behind_a_held_run(runtime, entry, recorder, requests[:1], timeout=0.05)
        on_time = asyncio.create_task(runtime.infer(entry, entry.versions[0], requests[1]))
        await asyncio.sleep(0)
        time.sleep(0.1)  # the loop is busy past the deadline: its timer cannot answer the late request
        recorder.release.set()
        deadline = time.monotonic() + 30
        while len(recorder.runs) < 2:  # the worker takes both queued requests, drops the late one, runs the other
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(DeadlineExceeded):
            await late
        await asyncio.gather(held, on_time)

    asyncio.run(scenario())
    assert recorder.rows == [1, 3]


def test_no_merged_run_exceeds_batch_max_images_and_larger_requests_run_alone(make_runtime):
    runtime, entry, recorder = make_runtime("autoencoder_encoder", batch_max_images=8)
    requests = [images(count, seed) for seed, count in enumerate([3, 3, 3, 2, 8, 3, 12, 1, 1])]

    async def scenario():
        tasks = await queued_behind_a_held_run(runtime, entry, recorder, requests)
        recorder.release.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(scenario())[1:]
    assert recorder.rows == [1, 6, 5, 8, 3, 12, 2]
    assert [len(result["code"]) for result in results] == [3, 3, 3, 2, 8, 3, 12, 1, 1]


def test_a_worker_waits_up_to_batch_max_delay_for_a_batch_to_fill(make_runtime):
    runtime, entry, recorder = make_runtime("autoencoder_encoder", batch_max_images=5, batch_max_delay_ms=10_000)

    async def scenario():
        first = asyncio.create_task(runtime.infer(entry, entry.versions[0], images(2, 0)))
        await asyncio.sleep(0.05)  # the free worker is waiting for more
        assert recorder.rows == []
        await asyncio.gather(first, runtime.infer(entry, entry.versions[0], images(3, 1)))  # the batch is full: it runs

    asyncio.run(scenario())
    assert recorder.rows == [5]


def test_a_batch_that_does_not_fill_runs_once_batch_max_delay_has_passed(make_runtime):
    runtime, entry, recorder = make_runtime("autoencoder_encoder", batch_max_delay_ms=50)

    async def scenario():
        start = time.monotonic()
        await runtime.infer(entry, entry.versions[0], images(2, 0))
        return time.monotonic() - start

    assert asyncio.run(scenario()) >= 0.05
    assert recorder.rows == [2]


def test_requests_queued_at_close_are_refused_and_the_running_one_finishes(make_runtime):
    runtime, entry, recorder = make_runtime("autoencoder_encoder")

    async def scenario():
        held, queued = await queued_behind_a_held_run(runtime, entry, recorder, [images(2, 0)])
        threading.Timer(0.1, recorder.release.set).start()  # close waits for the held run
        await runtime.close()
        assert len((await held)["code"]) == 1
        with pytest.raises(Unavailable):
            await queued
        with pytest.raises(Unavailable):
            await runtime.infer(entry, entry.versions[0], images(1, 1))

    asyncio.run(scenario())
    assert recorder.rows == [1]


def test_a_request_the_model_runs_quickly_runs_inline_on_the_calling_thread(make_runtime):
    runtime, entry, recorder = make_runtime("autoencoder_encoder", inline_max_ms=1000)
    requests = [images(1, seed) for seed in range(3)]

    async def scenario():
        return [await runtime.infer(entry, entry.versions[0], inputs) for inputs in requests]

    results = asyncio.run(scenario())
    # the first run has no estimate yet: a worker runs it; the next two take well under a second
    assert recorder.threads[0] != threading.get_ident() and recorder.threads[1:] == [threading.get_ident()] * 2
    for inputs, result in zip(requests, results):
        assert np.array_equal(result["code"], recorder.session.run(["code"], inputs)[0])


def test_a_request_over_inline_max_ms_goes_to_a_worker(make_runtime):
    runtime, entry, recorder = make_runtime("autoencoder_encoder", inline_max_ms=20)
    recorder.delay = 0.005  # 5 ms a run: one image runs inline, eight go to a worker

    async def scenario():
        for count in (1, 1, 8, 1):
            await runtime.infer(entry, entry.versions[0], images(count, count))

    asyncio.run(scenario())
    assert recorder.rows == [1, 1, 8, 1]
    assert [thread == threading.get_ident() for thread in recorder.threads] == [False, True, False, True]


def test_concurrent_encode_calls_through_the_gateway_run_as_one_batch(start_gateway, tmp_path):
    # The batch runs only once full: the three calls must merge however the threads are scheduled
    gateway = start_gateway(data_dir=tmp_path, gallery="none", batch_max_images=6, batch_max_delay_ms=30_000)
    entry = gateway.server.inference.entries()["autoencoder_encoder"]
    session = gateway.server.inference.runtime._sessions[("autoencoder_encoder", entry.versions[0])]
    requests = [images(count, seed)["image"] for seed, count in enumerate([1, 2, 3])]

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(f"latentserve_inference_batch_images_{name}", {"model": "autoencoder_encoder"}) or 0

    before = sample("count"), sample("sum")
    with gateway.channel() as channel:
        stub = encoder_pb2_grpc.EncoderStub(channel)
        calls = [stub.Encode.future(encoder_pb2.EncodeRequest(images=tensor_batch(pixels))) for pixels in requests]
        responses = [call.result(timeout=60) for call in calls]
    assert (sample("count") - before[0], sample("sum") - before[1]) == (1, 6)
    for pixels, response in zip(requests, responses):
        codes = np.frombuffer(response.codes.data, "<f4").reshape(response.codes.shape)
        assert np.array_equal(codes, session.run(["code"], {"image": pixels})[0])
