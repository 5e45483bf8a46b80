"""Triton Inference Server as the runtime, over gRPC (tritonclient.grpc.aio).

Signatures and model cards come from the same model repository on disk that Triton serves; which
versions are ready comes from Triton itself (`refresh`, polled by the gateway), so a model that Triton
unloads, or a Triton that goes away, turns the affected services NOT_SERVING until it is back. A version
is used only if it is both READY in Triton and valid on disk (latentserve.repository): one that fails
its checksum is not called even if Triton loaded it.
"""
import asyncio
import dataclasses
import logging
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

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


class TritonRuntime:
    def __init__(self, url: str, repository_root: Path, tls_ca_file: Path | None = None,
                 tls_cert_file: Path | None = None, tls_key_file: Path | None = None):
        """Over TLS when `tls_ca_file` is set (Triton's server certificate must chain to it); with
        `tls_cert_file` and `tls_key_file` too, the gateway shows Triton its own certificate (mutual TLS)."""
        self.url = url
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
        """Requests larger than the model's max_batch_size go as chunks, concurrently, and come back joined."""
        if version not in self._entries.get(entry.name, entry).versions:
            raise NotFound(f"{entry.name} version {version} is not ready in Triton", "model.version")
        count = len(next(iter(inputs.values())))
        step = entry.max_batch_size or count
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
                entry.name, request, model_version=str(version), outputs=outputs, client_timeout=timeout
            )
        except InferenceServerException as error:
            raise _error(error, entry) from None
        return {output.name: result.as_numpy(output.name) for output in entry.outputs}

    async def close(self) -> None:
        await self._client.close()
