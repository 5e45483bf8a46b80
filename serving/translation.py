"""The translate capability: images of one domain -> images of another, along a named direction.

A direction is the name of a translate graph ("edges2digit", "mnist2uci"); one model may offer several
directions and several models may offer one. The output is not named `image` like the input because ONNX
names every value of a graph once.
"""
from dataclasses import dataclass

import numpy as np

from serving.errors import InvalidArgument, NotFound
from latentserve.repository import Entry
from serving.runtime import InflightLimit, Runtime, resolve

CAPABILITY = "translate"
IMAGE_INPUT, TRANSLATED_OUTPUT = "image", "translated"


@dataclass(frozen=True)
class Translated:
    model: str
    version: int
    direction: str
    images: np.ndarray  # float32 (n, 1, 28, 28) in [0, 1]


class Translation:
    def __init__(self, runtime: Runtime, inflight: InflightLimit):
        self.runtime = runtime
        self.inflight = inflight

    def directions(self) -> dict[str, list[Entry]]:
        """Direction -> the translate entries offering it, in repository order."""
        directions: dict[str, list[Entry]] = {}
        for entry in self.runtime.entries().values():
            if entry.capability == CAPABILITY:
                directions.setdefault(entry.graph, []).append(entry)
        return directions

    async def translate(self, direction: str, model: str, version: int, images: np.ndarray, timeout: float | None = None) -> Translated:
        """`images` (n, 1, 28, 28) float32 in [0, 1]; `model` "" is the one model offering `direction`;
        `version` 0 runs the newest loaded version."""
        if not direction:
            raise InvalidArgument("name a direction (ListDirections lists them)", "direction")
        directions = self.directions()
        if direction not in directions:
            raise NotFound(f"no direction {direction!r}; served: {sorted(directions)}", "direction")
        if not model:
            offering = [entry.model for entry in directions[direction]]
            if len(offering) > 1:
                raise InvalidArgument(f"models {sorted(offering)} translate {direction!r}; name one", "model.name")
            model = offering[0]
        entry, version = resolve(self.runtime, model, CAPABILITY, version, graph=direction)
        with self.inflight.admit(entry):
            outputs = await self.runtime.infer(entry, version, {IMAGE_INPUT: images}, timeout)
        return Translated(model, version, direction, outputs[TRANSLATED_OUTPUT])
