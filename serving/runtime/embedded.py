"""In-process onnxruntime over model_repository/, loading the versions each config's policy selects."""
import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime

from serving.errors import DeadlineExceeded, NotFound
from serving.repository import ONNX_FILE, Entry, read_repository

log = logging.getLogger(__name__)


class EmbeddedRuntime:
    def __init__(self, repository_root: Path, intra_op_threads: int = 1, workers: int = 2):
        self._entries = read_repository(repository_root)
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="onnxruntime")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self._sessions = {
            (entry.name, version): onnxruntime.InferenceSession(
                str(entry.version_path(version) / ONNX_FILE), options, providers=["CPUExecutionProvider"]
            )
            for entry in self._entries.values()
            for version in entry.versions
        }
        for entry in self._entries.values():
            log.info("loaded %s versions %s", entry.name, list(entry.versions))

    def entries(self) -> dict[str, Entry]:
        return self._entries

    async def refresh(self) -> None:
        """Sessions are loaded once at start; nothing here changes until a restart."""

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
