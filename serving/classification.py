"""The classify capability: images -> class probabilities, the predicted class and its confidence."""
from dataclasses import dataclass

import numpy as np

from serving.runtime import InflightLimit, Runtime, resolve

CAPABILITY = "classify"
IMAGE_INPUT, PROBABILITIES_OUTPUT = "image", "probabilities"


@dataclass(frozen=True)
class Classified:
    model: str
    version: int
    probabilities: np.ndarray  # float32 (n, classes)
    labels: np.ndarray  # int64 (n,)
    confidences: np.ndarray  # float32 (n,): the predicted class's probability
    entropies: np.ndarray  # float32 (n,), nats


def summarise(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, confidences, entropies) of rows of class probabilities."""
    labels = probabilities.argmax(1)
    confidences = probabilities[np.arange(len(labels)), labels]
    entropies = -(probabilities * np.log(np.clip(probabilities, 1e-30, None))).sum(1)
    return labels, confidences, entropies.astype(np.float32)


class Classification:
    def __init__(self, runtime: Runtime, inflight: InflightLimit):
        self.runtime = runtime
        self.inflight = inflight

    async def classify(self, model: str, version: int, images: np.ndarray, timeout: float | None = None) -> Classified:
        """`images` (n, 1, 28, 28) float32 in [0, 1]; `version` 0 runs the newest loaded version."""
        entry, version = resolve(self.runtime, model, CAPABILITY, version)
        with self.inflight.admit(entry):
            outputs = await self.runtime.infer(entry, version, {IMAGE_INPUT: images}, timeout)
        probabilities = outputs[PROBABILITIES_OUTPUT]
        return Classified(model, version, probabilities, *summarise(probabilities))
