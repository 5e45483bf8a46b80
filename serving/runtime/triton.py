"""Triton Inference Server as the runtime, over gRPC (tritonclient.grpc.aio).

Signatures and model cards come from the same model repository on disk that Triton serves; which
versions are ready comes from Triton itself (`refresh`, polled by the gateway), so a model that Triton
unloads, or a Triton that goes away, turns the affected services NOT_SERVING until it is back. A version
is used only if it is both READY in Triton and valid on disk (latentserve.repository): one that fails
its checksum is not called even if Triton loaded it.

Each Triton call costs the gateway about as much CPU as the request it carries (grpc's client side), so
small requests are merged: while `calls_per_model` calls of one model version and input signature are in
flight, later requests wait, and the next call to start carries every waiting one, up to
`batch_max_images` images. A request as large as that goes alone. A merged call that fails is made again
for each of its requests alone, so an error stays with its request; a request cancelled or past its
deadline while waiting is never sent.
"""
import asyncio
import collections
import dataclasses
import logging
import math
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from serving import tracing
from serving.errors import DeadlineExceeded, InvalidArgument, NotFound, ResourceExhausted, ServingError, Unavailable
from latentserve.repository import Entry, is_version_name, read_repository

log = logging.getLogger(__name__)


def _error(error: InferenceServerException, entry: Entry) -> ServingError:
    """Triton's status -> ours: down or not ready -> UNAVAILABLE, queue full -> RESOURCE_EXHAUSTED, ..."""
    status, message = str(error.status() or ""), error.message() or str(error)
    text = f"{entry.name}: {message}"
    if "maximum queue size" in message or "RESOURCE_EXHAUSTED" in status:
        return ResourceExhausted(text)
    if "DEADLINE_EXCEEDED" in status or "Deadline" in message:
        return DeadlineExceeded(text)
    if "INVALID_ARGUMENT" in status:
        return InvalidArgument(message, "images")
    return Unavailable(f"Triton: {text}")


def _optional(path: Path | None) -> str | None:
    return None if path is None else str(path)


@dataclasses.dataclass(eq=False)  # compared by identity: the queue removes this request, not an equal one
class _Waiting:
    inputs: dict[str, np.ndarray]
    images: int
    deadline: float  # time.monotonic(); inf without a timeout
    future: asyncio.Future

    def settle(self, outputs: dict[str, np.ndarray] | None = None, error: Exception | None = None) -> None:
        if self.future.done():  # its caller stopped waiting
            return
        if error is None:
            self.future.set_result(outputs)
        else:
            self.future.set_exception(error)


class TritonRuntime:
    def __init__(self, url: str, repository_root: Path, tls_ca_file: Path | None = None,
                 tls_cert_file: Path | None = None, tls_key_file: Path | None = None,
                 calls_per_model: int = 2, batch_max_images: int = 64):
        """Over TLS when `tls_ca_file` is set (Triton's server certificate must chain to it); with
        `tls_cert_file` and `tls_key_file` too, the gateway shows Triton its own certificate (mutual TLS)."""
        self.url = url
        self._calls_per_model = calls_per_model
        self._batch_max_images = batch_max_images
        self._calls: collections.Counter[tuple] = collections.Counter()  # in flight, by (entry, version, input signature)
        self._waiting: dict[tuple, collections.deque[_Waiting]] = collections.defaultdict(collections.deque)
        self._merged: set[asyncio.Task] = set()  # merged calls running (the loop keeps only weak references)
        self._repository_root = repository_root
        self._client = triton.InferenceServerClient(
            url, ssl=tls_ca_file is not None, root_certificates=_optional(tls_ca_file),
            private_key=_optional(tls_key_file), certificate_chain=_optional(tls_cert_file),
        )
        self._entries: dict[str, Entry] = {}  # with the versions Triton reports READY
        self._ready: dict[str, set[int]] | None = None  # as last seen, to re-read the repository only on change
        self._reachable: bool | None = None

    def entries(self) -> dict[str, Entry]:
        return self._entries

    async def refresh(self) -> None:
        """Ask Triton which versions are ready; none if Triton cannot be reached."""
        try:
            index = await self._client.get_model_repository_index(client_timeout=2)
            ready = {}
            for model in index.models:
                if model.state == "READY" and is_version_name(model.version):
                    ready.setdefault(model.name, set()).add(int(model.version))
            if not self._reachable:
                log.info("Triton at %s: ready versions %s", self.url, ready)
            self._reachable = True
        except InferenceServerException as error:
            if self._reachable is not False:
                log.warning("Triton at %s is unreachable: %s", self.url, error.message())
            self._reachable, ready = False, {}
        if ready == self._ready:
            return
        self._ready = ready
        on_disk = read_repository(self._repository_root)
        self._entries = {
            name: dataclasses.replace(entry, versions=tuple(sorted(ready.get(name, set()) & set(entry.cards), reverse=True)))
            for name, entry in on_disk.items()
        }

    async def infer(self, entry: Entry, version: int, inputs: dict[str, np.ndarray], timeout: float | None = None) -> dict[str, np.ndarray]:
        if version not in self._entries.get(entry.name, entry).versions:
            raise NotFound(f"{entry.name} version {version} is not ready in Triton", "model.version")
        images = len(next(iter(inputs.values())))
        if images >= self._batch_max_images:
            return await self._infer_chunks(entry, version, inputs, timeout)
        key = (entry.name, version, tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items())))
        if self._calls[key] < self._calls_per_model:
            self._calls[key] += 1
            try:
                return await self._infer_chunks(entry, version, inputs, timeout)
            finally:
                self._call_ended(key, entry, version)
        waiting = _Waiting(inputs, images, time.monotonic() + (math.inf if timeout is None else timeout), asyncio.get_running_loop().create_future())
        self._waiting[key].append(waiting)
        try:
            async with asyncio.timeout(timeout):
                return await waiting.future
        except TimeoutError:
            raise DeadlineExceeded(f"{entry.name}: the deadline passed before Triton answered") from None
        finally:
            queue = self._waiting.get(key)
            if queue is not None and waiting in queue:  # cancelled, or past its deadline, before it was sent
                queue.remove(waiting)

    def _call_ended(self, key: tuple, entry: Entry, version: int) -> None:
        """A call of `key` ended: the requests waiting for one go now, merged, in a call of their own."""
        self._calls[key] -= 1
        queue = self._waiting.get(key)
        batch, images = [], 0
        while queue and (not batch or images + queue[0].images <= self._batch_max_images):
            batch.append(queue.popleft())
            images += batch[-1].images
        if queue is not None and not queue:
            del self._waiting[key]
        if not self._calls[key]:
            del self._calls[key]
        if batch:
            self._calls[key] += 1
            task = asyncio.create_task(self._infer_merged(key, entry, version, batch))
            self._merged.add(task)
            task.add_done_callback(self._merged.discard)

    async def _infer_merged(self, key: tuple, entry: Entry, version: int, batch: list[_Waiting]) -> None:
        try:
            deadline = max(waiting.deadline for waiting in batch)
            timeout = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
            try:
                inputs = {name: np.concatenate([waiting.inputs[name] for waiting in batch]) for name in batch[0].inputs}
                outputs = await self._infer_chunks(entry, version, inputs, timeout)
            except Exception as error:  # noqa: BLE001 - each request is answered alone, with its own error
                if len(batch) == 1:
                    batch[0].settle(error=error)
                    return
                for waiting in batch:
                    try:
                        waiting.settle(await self._infer_chunks(entry, version, waiting.inputs, timeout))
                    except Exception as error_alone:  # noqa: BLE001
                        waiting.settle(error=error_alone)
                return
            rows = np.cumsum([waiting.images for waiting in batch])[:-1]
            parts = {name: np.split(array, rows) for name, array in outputs.items()}
            for i, waiting in enumerate(batch):
                waiting.settle({name: pieces[i] for name, pieces in parts.items()})
        finally:
            self._call_ended(key, entry, version)

    async def _infer_chunks(self, entry: Entry, version: int, inputs: dict[str, np.ndarray], timeout: float | None) -> dict[str, np.ndarray]:
        """Requests larger than the model's max_batch_size go as chunks, concurrently, and come back joined."""
        count = len(next(iter(inputs.values())))
        step = entry.max_batch_size or count
        if count <= step:
            return await self._infer_chunk(entry, version, inputs, timeout)
        chunks = await asyncio.gather(*(
            self._infer_chunk(entry, version, {name: array[start : start + step] for name, array in inputs.items()}, timeout)
            for start in range(0, count, step)
        ))
        return {output.name: np.concatenate([chunk[output.name] for chunk in chunks]) for output in entry.outputs}

    async def _infer_chunk(self, entry: Entry, version: int, inputs: dict[str, np.ndarray], timeout: float | None):
        request = []
        for name, array in inputs.items():
            tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            request.append(tensor)
        outputs = [triton.InferRequestedOutput(output.name) for output in entry.outputs]
        try:
            result = await self._client.infer(
                entry.name, request, model_version=str(version), outputs=outputs, client_timeout=timeout,
                headers=tracing.context_headers(),
            )
        except InferenceServerException as error:
            raise _error(error, entry) from None
        return {output.name: result.as_numpy(output.name) for output in entry.outputs}

    async def close(self) -> None:
        for task in self._merged:
            task.cancel()
        for queue in self._waiting.values():
            for waiting in queue:
                waiting.settle(error=Unavailable("the runtime closed before this request was sent to Triton"))
        self._waiting.clear()
        await self._client.close()
