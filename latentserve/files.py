"""Files replaced at once: a reader sees the old content or the new, never part of either, even after a crash."""
import os
import tempfile
from pathlib import Path


PARTIAL = ".partial-"  # in the name of a temporary file of `write_atomically`: `.<name>.partial-<random>`


def write_atomically(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    """Write `data` to a temporary file beside `path` (with permissions `mode`), flush it to disk, rename it
    over `path` and flush the directory, so the rename survives a crash too."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{PARTIAL}")
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), mode)  # mkstemp makes it 0600
            file.write(data.encode() if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def remove_partial_writes(directory: Path) -> int:
    """Delete the temporary files that writes killed before their rename left in `directory` (none if it
    does not exist); how many there were."""
    partial = list(Path(directory).glob(f".*{PARTIAL}*"))
    for path in partial:
        path.unlink(missing_ok=True)
    return len(partial)
