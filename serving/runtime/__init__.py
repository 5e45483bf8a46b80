"""The runtime interface the gateway talks to. Implementations: `embedded` (in-process onnxruntime over
the model repository; the default) and `triton` (Triton Inference Server over gRPC). Both run the same
files of the model repository and give the same outputs."""
import contextlib
from collections import Counter
from typing import Protocol

import numpy as np

from latentserve.repository import Entry
from serving.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from serving.validation import quoted


class Runtime(Protocol):
    def entries(self) -> dict[str, Entry]:
        """Repository entries with the versions this runtime can serve now, newest first."""

    async def refresh(self) -> None:
        """Bring `entries()` up to date with the backend; the gateway calls it periodically."""

    async def infer(
        self, entry: Entry, version: int, inputs: dict[str, np.ndarray], timeout: float | None = None
    ) -> dict[str, np.ndarray]:
        """Run one batch within `timeout` seconds (None: no deadline); outputs by name."""

    async def close(self) -> None: ...


def resolve(
    runtime: Runtime, model: str, capability: str, version: int, field: str = "model", graph: str | None = None
) -> tuple[Entry, int]:
    """The entry serving `capability` for `model` (named `graph`, where a model has several graphs for one
    capability, as translators do), and the loaded version to run (0: the newest)."""
    matches = [e for e in runtime.entries().values() if e.model == model]
    if not matches:
        raise NotFound(f"no model named {quoted(model)}", f"{field}.name")
    entry = next((e for e in matches if e.capability == capability and graph in (None, e.graph)), None)
    if entry is None:
        wanted = capability if graph is None else f"{capability} {graph!r}"
        raise InvalidArgument(f"model {model!r} has no graph for {wanted}", f"{field}.name")
    if not entry.versions:
        raise Unavailable(f"model {model!r} has no version ready to serve")
    if version < 0:
        raise InvalidArgument("must be 0 (newest) or a version number", f"{field}.version")
    if version == 0:
        return entry, entry.versions[0]
    if version not in entry.versions:
        raise NotFound(f"version {version} of {model!r} is not loaded; loaded: {list(entry.versions)}", f"{field}.version")
    return entry, version


class InflightLimit:
    """The bounded queue in front of the models, shared by every capability: a request beyond `limit`
    running or waiting for its model entry, or one that would take the images or input bytes in flight
    over all models past `max_images` or `max_bytes`, is refused with RESOURCE_EXHAUSTED instead of
    queueing without bound."""

    def __init__(self, limit: int, max_images: int, max_bytes: int):
        self.limit, self.max_images, self.max_bytes = limit, max_images, max_bytes
        self._counts: Counter[str] = Counter()
        self.images = self.bytes = 0

    def total(self) -> int:
        """Requests running or waiting now, over all entries."""
        return sum(self._counts.values())

    @contextlib.contextmanager
    def admit(self, entry: Entry, images: int, size: int):
        """Hold a place for a request of `images` images and `size` bytes of inputs while it runs."""
        if self._counts[entry.name] >= self.limit:
            raise ResourceExhausted(f"{self.limit} requests already queued for {entry.model!r}; retry later")
        if self.images + images > self.max_images or self.bytes + size > self.max_bytes:
            raise ResourceExhausted(
                f"{self.images} images ({self.bytes} bytes) already in flight; the limits are {self.max_images} "
                f"images and {self.max_bytes} bytes; retry later"
            )
        self._counts[entry.name] += 1
        self.images += images
        self.bytes += size
        try:
            yield
        finally:
            self._counts[entry.name] -= 1
            self.images -= images
            self.bytes -= size
