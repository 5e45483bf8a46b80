"""`latentserve generate`: a batch generation job against a running gateway, resumable after a kill.

The job directory holds `job.json` (what was asked, with the model version pinned at the first run) and
the images: PNG files `images/<index>.png`, or `chunks/<first>-<last>.npz` (float32 images, labels,
indices). Every file is written to a temporary name and renamed, so a file that exists is complete (a
resumed job deletes the temporary files a kill left). A resumed job asks the gateway again from the start
of the first chunk it does not wholly hold, so every batch the model runs is the one an uninterrupted job
would have run; since sample i depends only on (model version, seed, i), the finished directory is the
same, byte for byte, as that of a job that was never interrupted.
"""
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from latentserve.client import Client, Images, ServiceError
from latentserve.files import remove_partial_writes, write_atomically
from latentserve.grid import save_grid

GRID_IMAGES = 100


@dataclass(frozen=True)
class Job:
    model: str
    version: int  # 0 until the first chunk says which version runs; then pinned
    count: int
    seed: int
    label: int | None
    truncation: float | None
    format: str  # "png" or "npz"
    chunk_size: int


def _png_path(directory: Path, index: int) -> Path:
    return directory / "images" / f"{index:09d}.png"


def _chunk_path(directory: Path, start: int, stop: int) -> Path:
    return directory / "chunks" / f"{start:09d}-{stop - 1:09d}.npz"


def _done(directory: Path, job: Job) -> int:
    """Where to start again: the first chunk (from index 0, `chunk_size` apart) not wholly written."""
    if job.format == "png":
        index = 0
        while index < job.count and _png_path(directory, index).exists():
            index += 1
        return index if index == job.count else index - index % job.chunk_size
    start = 0
    while start < job.count and _chunk_path(directory, start, min(start + job.chunk_size, job.count)).exists():
        start += job.chunk_size
    return min(start, job.count)


def _open(directory: Path, asked: Job, resume: bool) -> Job:
    path = directory / "job.json"
    if path.exists():
        if not resume:
            raise FileExistsError(f"{directory} already holds a job; pass --resume to continue it, or choose another --out")
        job = Job(**json.loads(path.read_text()))
        if {**asdict(job), "version": 0} != {**asdict(asked), "version": 0} or asked.version not in (0, job.version):
            raise FileExistsError(f"{directory} holds a different job: {asdict(job)}")
        for folder in (directory, directory / "images", directory / "chunks"):  # what a kill left mid-write
            remove_partial_writes(folder)
        return job
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ("images" if asked.format == "png" else "chunks")).mkdir(exist_ok=True)
    write_atomically(path, json.dumps(asdict(asked), indent=2).encode())
    return asked


def run(client: Client, directory: Path, asked: Job, resume: bool, grid: bool) -> Job:
    """Run or resume the job in `directory`; the job as run, its model version pinned."""
    job = _open(directory, asked, resume)
    done = _done(directory, job)
    progress = tqdm(total=job.count, initial=done, unit="img", desc=f"{job.model} seed {job.seed}", smoothing=0.1)
    if done < job.count:
        chunks = client.generate_stream(job.count - done, job.model, job.version, job.seed, done, job.label, job.truncation,
                                        job.chunk_size, png=job.format == "png")
        try:
            for chunk in chunks:
                if job.version == 0:  # pin the version that runs, so a resumed job uses the same one
                    job = Job(**{**asdict(job), "version": chunk.model.version})
                    write_atomically(directory / "job.json", json.dumps(asdict(job), indent=2).encode())
                _save_chunk(directory, job, chunk)
                progress.update(len(chunk.png) or len(chunk.images))
        except ServiceError as error:
            progress.close()
            raise SystemExit(f"error: {error}; generation stopped: "
                             f"{progress.n} of {job.count} images are in {directory}; continue with --resume") from None
    progress.close()
    if grid:
        save_grid(_first_images(directory, job, min(GRID_IMAGES, job.count)), directory / "grid.png", columns=10)
    return job


def _save_chunk(directory: Path, job: Job, chunk: Images) -> None:
    if job.format == "png":
        for offset, data in enumerate(chunk.png):
            write_atomically(_png_path(directory, chunk.start_index + offset), data)
        return
    stop = chunk.start_index + len(chunk.images)
    buffer = _npz_bytes(
        images=chunk.images, indices=np.arange(chunk.start_index, stop, dtype=np.int64), labels=np.asarray(chunk.labels, np.int64)
    )
    write_atomically(_chunk_path(directory, chunk.start_index, stop), buffer)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _first_images(directory: Path, job: Job, count: int) -> np.ndarray:
    """The job's first `count` images as (n, 1, 28, 28) floats, for the contact sheet."""
    if job.format == "png":
        from PIL import Image

        return np.stack([np.asarray(Image.open(_png_path(directory, i)), np.float32)[None] / 255 for i in range(count)])
    parts, start = [], 0
    while start < count:
        with np.load(_chunk_path(directory, start, min(start + job.chunk_size, job.count))) as chunk:
            parts.append(chunk["images"])
        start += job.chunk_size
    return np.concatenate(parts)[:count, None]
