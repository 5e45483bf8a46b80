"""The encode capability: images -> real-valued codes and packed binary codes."""
from dataclasses import dataclass

import numpy as np

from serving.runtime import InflightLimit, Runtime, resolve

CAPABILITY = "encode"
IMAGE_INPUT, CODE_OUTPUT, BITS_OUTPUT = "image", "code", "binary_code"


@dataclass(frozen=True)
class Codes:
    model: str
    version: int
    values: np.ndarray  # float32 (n, code_dim)
    bits: np.ndarray  # uint8 (n, ceil(num_bits / 8)), numpy.packbits order
    num_bits: int


class Encoding:
    def __init__(self, runtime: Runtime, inflight: InflightLimit):
        self.runtime = runtime
        self.inflight = inflight

    async def encode(self, model: str, version: int, images: np.ndarray, timeout: float | None = None) -> Codes:
        """`images` (n, 1, 28, 28) float32 in [0, 1]; `version` 0 runs the newest loaded version."""
        entry, version = resolve(self.runtime, model, CAPABILITY, version)
        with self.inflight.admit(entry):
            outputs = await self.runtime.infer(entry, version, {IMAGE_INPUT: images}, timeout)
        bits = outputs[BITS_OUTPUT]
        return Codes(model, version, outputs[CODE_OUTPUT], np.packbits(bits, axis=1), bits.shape[1])

    def signature(self, model: str, version: int) -> tuple[int, int, int]:
        """(version, code_dim, num_bits) of a model version; version 0: the newest loaded."""
        entry, version = resolve(self.runtime, model, CAPABILITY, version)
        dims = {output.name: output.dims[0] for output in entry.outputs}
        return version, dims[CODE_OUTPUT], dims[BITS_OUTPUT]
