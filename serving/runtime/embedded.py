"""In-process onnxruntime over model_repository/, loading the versions each config's policy selects.

Like Triton in poll mode, it follows the repository: `refresh` notices new, removed or rewritten version
directories and configs, loads the versions the policy now selects and drops the others. Calls already
running on a dropped version finish on it. A version directory that is not valid (latentserve.repository:
a stray name, a symlink, no card, files that fail their checksums, as while one is still being copied) or
that fails to load is left out, with its reason in `Entry.skipped`, and the others keep serving.

Dynamic batching: requests wait in a queue per session and input signature (names, dtypes, shapes past
the batch dimension). A worker that comes free runs the oldest queued request together with those queued
behind it, up to `batch_max_images` images, as one `session.run`, and splits the outputs back by rows.
A request cancelled or past its deadline while queued never runs; if a merged run fails, each of its
requests runs alone, so an error stays with the request that caused it.

Inline runs: a request that the model's recent runs say takes at most `inline_max_ms` runs at once on the
calling thread (the event loop), without queue or executor: for a small model at batch 1, handing the
run to a worker and waking the loop for its answer costs more CPU than the run itself.
"""
import asyncio
import collections
import dataclasses
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime
from prometheus_client import Histogram

from serving.errors import DeadlineExceeded, NotFound, Unavailable
from latentserve.repository import ONNX_FILE, Entry, read_repository

log = logging.getLogger(__name__)

BATCH_IMAGES = Histogram(
    "latentserve_inference_batch_images", "images in one onnxruntime run of the embedded runtime (merged requests)", ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


@dataclasses.dataclass(eq=False)  # compared by identity: the queue removes this request, not an equal one
class _Request:
    """One `infer` call waiting in its queue; a worker answers it through its event loop."""

    inputs: dict[str, np.ndarray]
    images: int
    deadline: float  # time.monotonic(); inf without a timeout
    queued: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future

    def answer(self, outputs: dict[str, np.ndarray] | None = None, error: Exception | None = None) -> None:
        self.loop.call_soon_threadsafe(_settle, self.future, outputs, error)


def _settle(future: asyncio.Future, outputs: dict[str, np.ndarray] | None, error: Exception | None) -> None:
    if future.done():  # its caller stopped waiting (cancelled, or past its deadline)
        return
    if error is None:
        future.set_result(outputs)
    else:
        future.set_exception(error)


class EmbeddedRuntime:
    def __init__(
        self, repository_root: Path, intra_op_threads: int = 1, workers: int = 2, niceness: int = 0,
        batch_max_images: int = 64, batch_max_delay_ms: float = 0.0, inline_max_ms: float = 0.0,
    ):
        self._root = repository_root
        self._inline_max = inline_max_ms / 1000
        # by (entry name, version): wall seconds per image of its recent runs (a moving average)
        self._seconds_per_image: dict[tuple[str, int], float] = {}
        self._batch_max_images = batch_max_images
        self._batch_max_delay = batch_max_delay_ms / 1000
        # A queue per (entry name, session, input signature), all under this lock; a worker waiting for a
        # batch to fill is woken by every new request
        self._queues: dict[tuple, collections.deque[_Request]] = collections.defaultdict(collections.deque)
        self._arrived = threading.Condition()
        self._closed = False
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
        self._seconds_per_image = {key: cost for key, cost in self._seconds_per_image.items() if key in sessions}

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
        if self._closed:
            raise Unavailable(f"{entry.name}: the runtime is closing")
        images = len(next(iter(inputs.values())))
        names = [output.name for output in entry.outputs]
        if images * self._seconds_per_image.get((entry.name, version), math.inf) <= self._inline_max:
            return dict(zip(names, self._timed_run((entry.name, version), session, names, inputs, images)))
        loop, now = asyncio.get_running_loop(), time.monotonic()
        request = _Request(inputs, images, now + (math.inf if timeout is None else timeout), now, loop, loop.create_future())
        key = (entry.name, session, tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items())))
        with self._arrived:
            if self._closed:
                raise Unavailable(f"{entry.name}: the runtime is closing")
            self._queues[key].append(request)
            self._arrived.notify_all()
            # One job per request: it runs this request, or finds it already taken by an earlier job
            self._executor.submit(self._run_queued, key, version, names)
        try:
            async with asyncio.timeout(timeout):
                return await request.future
        except TimeoutError:
            raise DeadlineExceeded(f"{entry.name}: the deadline passed before inference ended") from None
        finally:
            self._withdraw(key, request)  # queued still (cancelled, or past its deadline): it never runs

    def _withdraw(self, key: tuple, request: _Request) -> None:
        with self._arrived:
            queue = self._queues.get(key)
            if queue is not None and request in queue:
                queue.remove(request)
                if not queue:
                    del self._queues[key]  # an empty queue must not keep a dropped session alive

    def _timed_run(self, cost_key: tuple[str, int], session, names: list[str], inputs: dict[str, np.ndarray], images: int) -> list[np.ndarray]:
        """`session.run`, its wall time per image folded into the model's moving average."""
        BATCH_IMAGES.labels(cost_key[0]).observe(images)
        start = time.perf_counter()
        outputs = session.run(names, inputs)
        cost = (time.perf_counter() - start) / images
        self._seconds_per_image[cost_key] = 0.8 * self._seconds_per_image.get(cost_key, cost) + 0.2 * cost
        return outputs

    def _run_queued(self, key: tuple, version: int, names: list[str]) -> None:
        """In a worker: take the oldest queued requests of `key`, up to `batch_max_images` images (after
        waiting up to `batch_max_delay_ms` from the oldest's arrival for the batch to fill), and run them."""
        batch, expired = [], []
        with self._arrived:
            while (  # read again after each wait: an emptied queue is dropped, and a new request starts another
                (queue := self._queues.get(key)) and (left := queue[0].queued + self._batch_max_delay - time.monotonic()) > 0
                and sum(r.images for r in queue) < self._batch_max_images
            ):
                self._arrived.wait(left)
            now, images = time.monotonic(), 0
            while queue and (not batch or images + queue[0].images <= self._batch_max_images):
                request = queue.popleft()
                if request.deadline <= now:  # its caller's timer may not have fired yet on a busy event loop
                    expired.append(request)
                else:
                    batch.append(request)
                    images += request.images
            if queue is not None and not queue:
                del self._queues[key]
        for request in expired:
            request.answer(error=DeadlineExceeded(f"{key[0]}: the deadline passed before inference"))
        if batch:
            self._run(key, version, names, batch)

    def _run(self, key: tuple, version: int, names: list[str], batch: list[_Request]) -> None:
        """One `session.run` over `batch`; if it fails, each request runs alone."""
        model, session = key[:2]
        inputs = batch[0].inputs  # a request alone goes as it came, not copied
        try:
            if len(batch) > 1:
                inputs = {name: np.concatenate([r.inputs[name] for r in batch]) for name in inputs}
            outputs = self._timed_run((model, version), session, names, inputs, sum(r.images for r in batch))
            rows = np.cumsum([r.images for r in batch])[:-1]
            parts = [np.split(output, rows) for output in outputs]
        except Exception as error:  # noqa: BLE001 - it goes back to the caller
            if len(batch) == 1:
                batch[0].answer(error=error)
            else:
                for request in batch:
                    self._run(key, version, names, [request])
            return
        for request, *pieces in zip(batch, *parts):
            request.answer(dict(zip(names, pieces)))

    async def close(self) -> None:
        """Requests still queued get UNAVAILABLE; runs in progress finish."""
        with self._arrived:
            self._closed = True
            queued = [request for queue in self._queues.values() for request in queue]
            self._queues.clear()
            self._arrived.notify_all()
        for request in queued:
            request.answer(error=Unavailable("the runtime closed before this request ran"))
        self._executor.shutdown(wait=True)
