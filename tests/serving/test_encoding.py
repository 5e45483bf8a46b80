"""The encode capability's bounded queue, on a runtime that holds requests until told to finish."""
import asyncio

import numpy as np
import pytest

from latentserve import repository
from serving.capability import Inference
from serving.encoding import Encoding
from serving.errors import ResourceExhausted
from serving.runtime import InflightLimit
from serving.settings import Settings
from tests.conftest import MODEL_REPOSITORY


class HeldRuntime:
    def __init__(self):
        self._entries = repository.read_repository(MODEL_REPOSITORY)
        self.release = asyncio.Event()

    def entries(self):
        return self._entries

    async def infer(self, entry, version, inputs, timeout=None):
        await self.release.wait()
        count = len(inputs["image"])
        return {"code": np.zeros((count, 32), np.float32), "binary_code": np.zeros((count, 32), np.uint8)}


def test_requests_over_the_in_flight_limit_are_refused_until_one_finishes():
    async def scenario():
        runtime = HeldRuntime()
        encoding = Encoding(Settings(), Inference(InflightLimit(2, 1000, 1 << 30), runtime))
        images = np.zeros((1, 1, 28, 28), np.float32)
        held = [asyncio.create_task(encoding.encode("autoencoder", 0, images)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match="2 requests already queued"):
            await encoding.encode("autoencoder", 0, images)
        runtime.release.set()
        await asyncio.gather(*held)
        assert (await encoding.encode("autoencoder", 0, images)).num_bits == 32

    asyncio.run(scenario())


def test_requests_over_the_images_or_bytes_in_flight_are_refused_until_one_finishes():
    async def scenario():
        runtime = HeldRuntime()
        images = np.zeros((3, 1, 28, 28), np.float32)  # 9,408 bytes
        for limits, refused in (((5, 1 << 30), "3 images"), ((1000, 15_000), "9408 bytes")):
            encoding = Encoding(Settings(), Inference(InflightLimit(10, *limits), runtime))
            runtime.release.clear()
            held = asyncio.create_task(encoding.encode("autoencoder", 0, images))
            await asyncio.sleep(0)
            with pytest.raises(ResourceExhausted, match=refused):
                await encoding.encode("autoencoder", 0, images)
            runtime.release.set()
            await held
            assert (await encoding.encode("autoencoder", 0, images)).num_bits == 32

    asyncio.run(scenario())
