"""What every capability of the gateway shares: inference through the runtime, and the shape of a capability.

A capability (encode, search, generate, classify, translate, and the model listing) is one module holding
its logic, a `Capability` subclass, and its thin gRPC servicer. The server is built from one list of them
(serving/server.py).
"""
import asyncio
import io
import warnings

import numpy as np
from PIL import Image as PILImage

from latentserve.repository import Entry
from latentserve.v1 import common_pb2
from serving import convert, tracing, validation
from serving.errors import ResourceExhausted, Unavailable
from serving.runtime import InflightLimit, Runtime, resolve
from serving.settings import Settings


class Inference:
    """The runtime, once loaded, behind the bounded queue every capability shares."""

    def __init__(self, inflight: InflightLimit, runtime: Runtime | None = None):
        self.inflight = inflight
        self._runtime = runtime

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise Unavailable("models are still loading")
        return self._runtime

    @runtime.setter
    def runtime(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @property
    def loaded(self) -> bool:
        return self._runtime is not None

    def entries(self) -> dict[str, Entry]:
        return self.runtime.entries()

    def resolve(self, model: str, capability: str, version: int, graph: str | None = None, field: str = "model") -> tuple[Entry, int]:
        return resolve(self.runtime, model, capability, version, field=field, graph=graph)

    def ready(self, model: str, capability: str) -> bool:
        """Whether `model`'s graph for `capability` has a version loaded."""
        return self.loaded and any(e.model == model and e.capability == capability and e.versions for e in self.entries().values())

    async def run(self, entry: Entry, version: int, inputs: dict[str, np.ndarray], timeout: float | None) -> dict[str, np.ndarray]:
        images = len(next(iter(inputs.values())))
        tracing.annotate(capability=entry.capability, model=entry.model, graph=entry.graph, version=version, images=images)
        with self.inflight.admit(entry, images, sum(array.nbytes for array in inputs.values())), tracing.span("inference", model=entry.name, version=version, images=images):
            return await self.runtime.infer(entry, version, inputs, timeout)


class Capability:
    """One capability: subclasses build their servicer and say when they are ready (their health)."""

    def __init__(self, settings: Settings, inference: Inference):
        self.settings = settings
        self.inference = inference

    def servicer(self):
        """This capability's servicer: a subclass of a protoc-generated `<Service>Servicer`."""
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    async def open(self) -> None:
        """Called once the runtime has loaded (the search capability opens its index here)."""

    async def close(self) -> None:
        """Called when the server stops."""



def _declared_pixels(data: bytes) -> int:
    """Width x height as an image file's header declares it; 0 when it cannot be read (decoding says why)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            width, height = PILImage.open(io.BytesIO(data)).size
    except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError):
        return 0
    return width * height


async def _off_the_loop(decode, files: list[bytes], field: str, settings: Settings) -> np.ndarray:
    """Decode encoded `files` on a worker thread, so a request of large images never stalls the other
    calls (health included), and only within `max_request_pixels` in all, read from the headers first:
    a few KB of PNG can declare a 16-megapixel image. Raw tensors (no files) convert on the loop: a copy."""
    if not files:
        return decode()
    validation.count(len(files), settings.max_batch_images, field, "images")
    pixels = sum(map(_declared_pixels, files))
    if pixels > settings.max_request_pixels:
        raise ResourceExhausted(f"{pixels} pixels in all; the limit per request is {settings.max_request_pixels}", field)
    with tracing.span("decode", files=len(files), pixels=pixels):
        return await asyncio.to_thread(decode)


async def decode_images(images: common_pb2.Images, field: str, settings: Settings, resize: bool = True) -> np.ndarray:
    """An Images message -> (n, 1, 28, 28) float32 in [0, 1] (serving/convert.py says how)."""
    files = list(images.encoded.images) if images.WhichOneof("data") == "encoded" else []
    return await _off_the_loop(
        lambda: convert.decode_batch(images, field, settings.max_batch_images, settings.max_image_pixels, resize=resize),
        files, field, settings,
    )


async def decode_image_list(images: list[common_pb2.Image], fields: list[str], field: str, settings: Settings) -> np.ndarray:
    """Image messages, each named by its field (`items[3].image`), of the request field `field` ->
    (n, 1, 28, 28) float32 in [0, 1]."""
    files = [image.encoded for image in images if image.WhichOneof("data") == "encoded"]
    return await _off_the_loop(
        lambda: np.stack([convert.decode_image(image, name, settings.max_image_pixels) for image, name in zip(images, fields)]),
        files, field, settings,
    )
