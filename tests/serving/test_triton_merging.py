"""The Triton runtime merges small requests that wait while its calls are in flight. Triton itself is
played by a stand-in for the runtime's one call (`_infer_chunk`), which records each call, holds it until
released, and fails a call holding a NaN; tests/serving/test_triton.py runs the real one."""
import asyncio

import numpy as np
import pytest

from latentserve.repository import read_repository
from serving.errors import DeadlineExceeded, Unavailable
from serving.runtime.triton import TritonRuntime
from tests.conftest import MODEL_REPOSITORY

ENTRY = "autoencoder_encoder"


class StandIn:
    def __init__(self):
        self.calls: list[int] = []
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(self, entry, version, inputs, timeout):
        pixels = inputs["image"]
        self.calls.append(len(pixels))
        await self.release.wait()
        if np.isnan(pixels).any():
            raise ValueError("a NaN")
        return {"code": pixels.sum(axis=(1, 2, 3))[:, None], "binary_code": pixels[:, 0, 0, :4]}


async def runtime_with_stand_in(**settings) -> tuple[TritonRuntime, object, StandIn]:
    runtime = TritonRuntime("127.0.0.1:1", MODEL_REPOSITORY, **settings)  # never reached: the stand-in answers
    entry = read_repository(MODEL_REPOSITORY)[ENTRY]
    runtime._entries = {ENTRY: entry}
    stand_in = runtime._infer_chunk = StandIn()
    return runtime, entry, stand_in


def images(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"image": np.random.default_rng(seed).random((count, 1, 28, 28), dtype=np.float32)}


async def behind_a_held_call(runtime, entry, stand_in, requests, **infer) -> list[asyncio.Task]:
    """One request's call held in flight (calls_per_model 1), then `requests` waiting behind it."""
    stand_in.release.clear()
    held = asyncio.create_task(runtime.infer(entry, entry.versions[0], images(1, 99)))
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(runtime.infer(entry, entry.versions[0], inputs, **infer)) for inputs in requests]
    await asyncio.sleep(0)
    return [held, *tasks]


def expected(inputs: dict[str, np.ndarray]) -> np.ndarray:
    return inputs["image"].sum(axis=(1, 2, 3))[:, None]


def test_requests_waiting_for_a_call_go_merged_in_the_next_and_each_gets_its_rows():
    async def scenario():
        runtime, entry, stand_in = await runtime_with_stand_in(calls_per_model=1)
        requests = [images(count, seed) for seed, count in enumerate([1, 3, 2, 5])]
        tasks = await behind_a_held_call(runtime, entry, stand_in, requests)
        stand_in.release.set()
        results = await asyncio.gather(*tasks)
        await runtime.close()
        return stand_in.calls, requests, results[1:]

    calls, requests, results = asyncio.run(scenario())
    assert calls == [1, 11]
    for inputs, result in zip(requests, results):
        assert np.array_equal(result["code"], expected(inputs))


def test_an_error_in_a_merged_call_stays_with_its_request():
    async def scenario():
        runtime, entry, stand_in = await runtime_with_stand_in(calls_per_model=1)
        with_nan = images(2, 5)
        with_nan["image"][1, 0, 2, 2] = np.nan
        requests = [images(2, 0), with_nan, images(3, 1)]
        tasks = await behind_a_held_call(runtime, entry, stand_in, requests)
        stand_in.release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await runtime.close()
        return stand_in.calls, requests, results[1:]

    calls, requests, results = asyncio.run(scenario())
    assert calls == [1, 7, 2, 2, 3]  # the merged call fails; each of its requests is sent alone
    assert str(results[1]) == "a NaN"
    assert np.array_equal(results[0]["code"], expected(requests[0])) and np.array_equal(results[2]["code"], expected(requests[2]))


def test_a_waiting_request_cancelled_or_past_its_deadline_is_never_sent():
    async def scenario():
        runtime, entry, stand_in = await runtime_with_stand_in(calls_per_model=1)
        held, first, cancelled, last = await behind_a_held_call(runtime, entry, stand_in, [images(2, 0), images(3, 1), images(4, 2)])
        cancelled.cancel()
        late = asyncio.create_task(runtime.infer(entry, entry.versions[0], images(5, 3), timeout=0.05))
        with pytest.raises(DeadlineExceeded):
            await late  # while the call ahead of it is still held
        stand_in.release.set()
        await asyncio.gather(held, first, last)
        await runtime.close()
        return stand_in.calls

    assert asyncio.run(scenario()) == [1, 6]  # 2 + 4: neither the cancelled 3 nor the late 5 was sent


def test_merged_calls_stop_at_batch_max_images_and_a_request_that_large_goes_at_once():
    async def scenario():
        runtime, entry, stand_in = await runtime_with_stand_in(calls_per_model=1, batch_max_images=8)
        tasks = await behind_a_held_call(runtime, entry, stand_in, [images(count, seed) for seed, count in enumerate([3, 4, 2, 5])])
        large = asyncio.create_task(runtime.infer(entry, entry.versions[0], images(8, 9)))
        await asyncio.sleep(0)
        assert stand_in.calls == [1, 8]  # the large one did not wait for the held call
        stand_in.release.set()
        await asyncio.gather(*tasks, large)
        await runtime.close()
        return stand_in.calls

    assert asyncio.run(scenario()) == [1, 8, 7, 7]


def test_requests_waiting_at_close_are_refused():
    async def scenario():
        runtime, entry, stand_in = await runtime_with_stand_in(calls_per_model=1)
        held, waiting = await behind_a_held_call(runtime, entry, stand_in, [images(2, 0)])
        await runtime.close()
        with pytest.raises(Unavailable):
            await waiting
        held.cancel()

    asyncio.run(scenario())
