"""In-process onnxruntime over model_repository/, loading the versions each config's policy selects.

Like Triton in poll mode, it follows the repository: `refresh` notices new, removed or rewritten version
directories and configs, loads the versions the policy now selects and drops the others. Calls already
running on a dropped version finish on it. A version directory that is not valid (latentserve.repository:
a stray name, a symlink, no card, files that fail their checksums, as while one is still being copied) or
that fails to load is left out, with its reason in `Entry.skipped`, and the others keep serving.
"""
import asyncio
import dataclasses
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime

from serving.errors import DeadlineExceeded, NotFound
from latentserve.repository import ONNX_FILE, Entry, read_repository

log = logging.getLogger(__name__)


class EmbeddedRuntime:
    def __init__(self, repository_root: Path, intra_op_threads: int = 1, workers: int = 2, niceness: int = 0):
        self._root = repository_root
        # Linux sets a nice value per thread: inference yields the cores to the event loop under overload
        self._executor = ThreadPoolExecutor(
            workers, thread_name_prefix="onnxruntime", initializer=lambda: os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        )
        self._options = onnxruntime.SessionOptions()
        self._options.intra_op_num_threads = intra_op_threads
        self._options.inter_op_num_threads = 1
        self._entries: dict[str, Entry] = {}
        self._sessions: dict[tuple[str, int], onnxruntime.InferenceSession] = {}
        self._fingerprint = self._repository_fingerprint()
        self._load()

    def entries(self) -> dict[str, Entry]:
        return self._entries

    def _repository_fingerprint(self) -> tuple:
        """Path, size and mtime of everything under the repository but hidden names (an export being staged):
        a few hundred stat calls, so polling it is cheap. The repository (and every checksum) is re-read only
        when this changes, so a version still being copied in is checked again once it is complete."""
        paths = []
        for directory, subdirectories, files in os.walk(self._root):  # unreadable directories are left out
            subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
            paths += [os.path.join(directory, name) for name in subdirectories + files if not name.startswith(".")]
        return tuple(sorted((path, os.lstat(path).st_size, os.lstat(path).st_mtime_ns) for path in paths))

    def _load(self) -> None:
        """Serve the versions each policy selects that load; one that fails is logged and skipped."""
        entries, sessions = {}, {}
        for entry in read_repository(self._root).values():
            skipped = dict(entry.skipped)
            for version in entry.versions:
                key = (entry.name, version)
                try:
                    sessions[key] = self._sessions.get(key) or onnxruntime.InferenceSession(
                        str(entry.version_path(version) / ONNX_FILE), self._options, providers=["CPUExecutionProvider"]
                    )
                except Exception as error:  # noqa: BLE001 - a broken version must not stop the others
                    log.error("%s version %d failed to load: %s", entry.name, version, error)
                    skipped[str(version)] = f"failed to load: {error}"
            loaded = tuple(v for v in entry.versions if (entry.name, v) in sessions)
            entries[entry.name] = dataclasses.replace(entry, versions=loaded, skipped=skipped)
            log.info("serving %s versions %s", entry.name, list(loaded))
        self._sessions, self._entries = sessions, entries  # swapped whole: a call sees the old set or the new

    async def refresh(self) -> None:
        fingerprint = await asyncio.to_thread(self._repository_fingerprint)
        if fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            await asyncio.to_thread(self._load)

    async def infer(
        self, entry: Entry, version: int, inputs: dict[str, np.ndarray], timeout: float | None = None
    ) -> dict[str, np.ndarray]:
        session = self._sessions.get((entry.name, version))
        if session is None:
            raise NotFound(f"{entry.name} version {version} is not loaded", "model.version")
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded(f"{entry.name}: the deadline passed before inference")
        names = [output.name for output in entry.outputs]
        outputs = await asyncio.get_running_loop().run_in_executor(self._executor, session.run, names, inputs)
        return dict(zip(names, outputs))

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
