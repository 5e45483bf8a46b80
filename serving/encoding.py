"""The encode capability: images -> real-valued codes and packed binary codes."""
from dataclasses import dataclass

import numpy as np

from latentserve.contract import BINARY_CODE, CODE, ENCODE, IMAGE
from latentserve.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from serving import convert
from serving.capability import Capability, decode_images


@dataclass(frozen=True)
class Codes:
    model: str
    version: int
    values: np.ndarray  # float32 (n, code_dim)
    bits: np.ndarray  # uint8 (n, ceil(num_bits / 8)), numpy.packbits order
    num_bits: int


class Encoding(Capability):
    def servicer(self):
        return EncoderServicer(self)

    def ready(self) -> bool:
        return self.inference.ready(self.settings.index_model, ENCODE)

    async def encode(self, model: str, version: int, images: np.ndarray, timeout: float | None = None) -> Codes:
        """`images` (n, 1, 28, 28) float32 in [0, 1]; `version` 0 runs the newest loaded version."""
        entry, version = self.inference.resolve(model, ENCODE, version)
        outputs = await self.inference.run(entry, version, {IMAGE: images}, timeout)
        bits = outputs[BINARY_CODE]
        return Codes(model, version, outputs[CODE], np.packbits(bits, axis=1), bits.shape[1])

    def signature(self, model: str, version: int) -> tuple[int, int, int]:
        """(version, code_dim, num_bits) of a model version; version 0: the newest loaded."""
        entry, version = self.inference.resolve(model, ENCODE, version)
        dims = {output.name: output.dims[0] for output in entry.outputs}
        return version, dims[CODE], dims[BINARY_CODE]


class EncoderServicer(encoder_pb2_grpc.EncoderServicer):
    def __init__(self, encoding: Encoding):
        self.encoding = encoding

    async def Encode(self, request, context):
        settings = self.encoding.settings
        images = await decode_images(request.images, "images", settings)
        codes = await self.encoding.encode(
            request.model.name or settings.index_model, request.model.version, images, context.time_remaining()
        )
        return encoder_pb2.EncodeResponse(
            model=common_pb2.ModelRef(name=codes.model, version=codes.version),
            codes=convert.tensor(codes.values, common_pb2.DATA_TYPE_FLOAT32),
            bits=convert.tensor(codes.bits, common_pb2.DATA_TYPE_UINT8),
            num_bits=codes.num_bits,
        )
