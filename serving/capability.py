"""What every capability of the gateway shares: inference through the runtime, and the shape of a capability.

A capability (encode, search, generate, classify, translate, and the model listing) is one module holding
its logic, a `Capability` subclass, and its thin gRPC servicer. The server is built from one list of them
(serving/server.py).
"""
import numpy as np

from latentserve.repository import Entry
from serving.errors import Unavailable
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

    def resolve(self, model: str, capability: str, version: int, graph: str | None = None) -> tuple[Entry, int]:
        return resolve(self.runtime, model, capability, version, graph=graph)

    def ready(self, model: str, capability: str) -> bool:
        """Whether `model`'s graph for `capability` has a version loaded."""
        return self.loaded and any(e.model == model and e.capability == capability and e.versions for e in self.entries().values())

    async def run(self, entry: Entry, version: int, inputs: dict[str, np.ndarray], timeout: float | None) -> dict[str, np.ndarray]:
        with self.inflight.admit(entry):
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
