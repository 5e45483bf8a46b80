"""The search index: FAISS in memory, SQLite on disk.

Every AddItems / DeleteItems is one SQLite transaction (WAL journal, synchronous=FULL) committed before
the call returns, so a restart loses nothing acknowledged and a crash mid-write leaves the previous state.
The FAISS indexes (exact L2 over real codes, Hamming over packed bits, both keyed by the item's row) are
written to disk on a clean close, stamped with the store's write count; on open they are read back if the
stamp matches and rebuilt from SQLite if not (after a crash).

One process at a time: an open index holds an exclusive lock on `.lock` in its directory, which names the
holder; the OS drops the lock when the holder closes the index or dies, so a lock is never stale.
"""
import fcntl
import json
import os
import socket
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import faiss
import numpy as np

from serving.errors import AlreadyExists, FailedPrecondition, NotFound

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    label INTEGER,
    metadata TEXT NOT NULL,
    code BLOB NOT NULL,
    bits BLOB NOT NULL,
    image BLOB
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
LABEL_INDEX = "CREATE INDEX IF NOT EXISTS items_label ON items (label)"  # filters on label


Where = tuple[str, list]  # a SQL condition over `items` and its parameters (serving/filters.py makes them)


class IndexLocked(OSError):
    """Another process has the index open: one gateway per data directory."""


@dataclass(frozen=True)
class Binding:
    """What the codes in an index mean: which encoder version made them, and their sizes."""

    model: str
    version: int
    code_dim: int
    num_bits: int


@dataclass(frozen=True)
class NewItem:
    id: str
    code: np.ndarray  # float32 (code_dim,)
    bits: np.ndarray  # uint8 packed (ceil(num_bits / 8),)
    label: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    image: bytes | None = None  # the Image message as sent, in a collection that keeps images


@dataclass(frozen=True)
class StoredItem:
    row: int
    id: str
    label: int | None
    metadata: dict[str, str]
    code: np.ndarray
    bits: np.ndarray
    image: bytes | None


@dataclass(frozen=True)
class Hit:
    id: str
    distance: float
    label: int | None
    metadata: dict[str, str]


class CodeIndex:
    def __init__(self, directory: Path, binding: Binding | None, keep_images: bool = False):
        """Open the index in `directory`, creating it for `binding` (and `keep_images`) if new; an existing
        one keeps its own. Without `binding`, one that has none is FailedPrecondition."""
        directory.mkdir(parents=True, exist_ok=True)
        self._directory = directory
        self._lock_file = _lock_directory(directory)
        self._lock = threading.RLock()  # one connection: reads must not see a write in progress
        self._closed = False
        self._db = sqlite3.connect(directory / "items.sqlite", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        if "image" not in {column[1] for column in self._db.execute("PRAGMA table_info(items)")}:
            self._db.execute("ALTER TABLE items ADD COLUMN image BLOB")  # an index made before collections
        self._db.execute(LABEL_INDEX)
        stored = self._meta("binding")
        if stored is None and binding is None:
            self._db.close()
            self._lock_file.close()
            raise FailedPrecondition(f"no index in {directory}")
        if stored is None:
            self._set_meta({"binding": json.dumps(binding.__dict__), "writes": "0", "keep_images": json.dumps(keep_images)})
            stored = self._meta("binding")
        self.binding = Binding(**json.loads(stored))
        self.keep_images = json.loads(self._meta("keep_images") or "false")
        self._codes, self._bits = self._load_faiss()

    # --- reads -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._codes.ntotal

    def get(self, item_id: str) -> tuple[int, np.ndarray, np.ndarray]:
        with self._locked():
            row = self._db.execute("SELECT row, code, bits FROM items WHERE id = ?", (item_id,)).fetchone()
        if row is None:
            raise NotFound("no such item is stored", "id")
        return row[0], np.frombuffer(row[1], np.float32), np.frombuffer(row[2], np.uint8)

    def search(self, queries: np.ndarray, hashed: bool, k: int, exclude_rows: list[int | None], where: Where | None = None) -> list[list[Hit]]:
        """The k nearest items to each query (float32 codes, or packed bits when `hashed`), leaving out
        each query's `exclude_rows` entry; with `where`, only among the items it selects, inside the
        index, so k hits come back whenever k items match."""
        with self._locked():
            params = None
            if where is not None:
                rows = self._rows(where)
                if not len(rows):
                    return [[] for _ in queries]
                params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(rows))
            index = self._bits if hashed else self._codes
            wanted = k + any(row is not None for row in exclude_rows)
            distances, rows = index.search(queries, wanted, params=params)
            return [self._hits(d, r, exclude, k) for d, r, exclude in zip(distances, rows, exclude_rows)]

    def get_items(self, ids: list[str]) -> list[StoredItem]:
        """The stored items among `ids`, in their order."""
        with self._locked():
            found = {item.id: item for item in self._select("id IN ({})".format(",".join("?" * len(ids))), ids)} if ids else {}
        return [found[item_id] for item_id in ids if item_id in found]

    def page(self, after_row: int, size: int, where: Where | None = None) -> list[StoredItem]:
        """Up to `size` items stored after row `after_row`, in row order (the order they were stored)."""
        clause, params = where or ("1", [])
        with self._locked():
            return self._select(f"row > ? AND ({clause}) ORDER BY row LIMIT ?", [after_row, *params, size])

    def codes(self) -> tuple[list[str], np.ndarray]:
        """Every stored item's id and real-valued code, in the order they were added."""
        with self._locked():
            stored = self._db.execute("SELECT id, code FROM items ORDER BY row").fetchall()
        codes = np.stack([np.frombuffer(code, np.float32) for _, code in stored]) if stored else np.zeros((0, self.binding.code_dim), np.float32)
        return [item_id for item_id, _ in stored], codes

    def is_marked(self, key: str) -> bool:
        with self._locked():
            return self._meta(key) is not None

    # --- writes ------------------------------------------------------------------------------------
    def add(self, items: list[NewItem], mark: str | None = None, replace: bool = False) -> int:
        """All or nothing; durable when it returns. A stored id is AlreadyExists, or with `replace` its
        item is replaced (a new row: it moves to the end of the store's order). `mark` is set in the
        same transaction. Returns how many items were replaced."""
        ids = [item.id for item in items]
        codes = np.stack([item.code for item in items]).astype(np.float32)
        bits = np.stack([item.bits for item in items]).astype(np.uint8)
        if codes.shape[1] != self.binding.code_dim or bits.shape[1] != self._bits.code_size:
            raise FailedPrecondition(f"codes of shape {codes.shape[1:]} do not fit this index ({self.binding})")
        with self._locked():
            existing = self._existing(ids)
            if existing and not replace:
                first = next(i for i, item_id in enumerate(ids) if item_id in existing)
                raise AlreadyExists(f"{len(existing)} already stored, the first items[{first}].id", "items.id")
            with self._transaction():
                replaced = [self._db.execute("DELETE FROM items WHERE id = ? RETURNING row", (i,)).fetchone()[0] for i in existing]
                rows = [
                    self._db.execute(
                        "INSERT INTO items (id, label, metadata, code, bits, image) VALUES (?, ?, ?, ?, ?, ?) RETURNING row",
                        (item.id, item.label, json.dumps(item.metadata), code.tobytes(), packed.tobytes(), item.image if self.keep_images else None),
                    ).fetchone()[0]
                    for item, code, packed in zip(items, codes, bits)
                ]
                if mark:
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, '1')", (mark,))
            self._remove_rows(replaced)
            rows = np.asarray(rows, dtype=np.int64)
            self._codes.add_with_ids(codes, rows)
            self._bits.add_with_ids(bits, rows)
            return len(replaced)

    def delete(self, ids: list[str]) -> None:
        """All or nothing: an unknown id deletes nothing."""
        with self._locked():
            missing = set(ids) - self._existing(ids)
            if missing:
                first = next(i for i, item_id in enumerate(ids) if item_id in missing)
                raise NotFound(f"{len(missing)} not stored, the first ids[{first}]", "ids")
            with self._transaction():
                rows = [self._db.execute("DELETE FROM items WHERE id = ? RETURNING row", (i,)).fetchone()[0] for i in ids]
            self._remove_rows(rows)

    def delete_where(self, where: Where) -> int:
        """Every item `where` selects, in one transaction; how many."""
        clause, params = where
        with self._locked():
            with self._transaction():
                rows = [row for (row,) in self._db.execute(f"DELETE FROM items WHERE {clause} RETURNING row", params)]
            self._remove_rows(rows)
            return len(rows)

    def close(self) -> None:
        """Snapshot the FAISS indexes so the next open needs no rebuild."""
        with self._lock:
            if self._closed:
                return
            writes = self._meta("writes")
            for index, name, write in ((self._codes, "codes.faiss", faiss.write_index), (self._bits, "bits.faiss", faiss.write_index_binary)):
                temporary = self._directory / (name + ".tmp")
                write(index, str(temporary))
                os.replace(temporary, self._directory / name)
            stamp = self._directory / "faiss.stamp"
            stamp.with_suffix(".tmp").write_text(writes)
            os.replace(stamp.with_suffix(".tmp"), stamp)
            self._db.close()
            self._lock_file.close()
            self._closed = True

    # --- internals ---------------------------------------------------------------------------------
    @contextmanager
    def _locked(self):
        """The index to itself; NotFound once closed (a collection dropped while a call still held it)."""
        with self._lock:
            if self._closed:
                raise NotFound("the collection was dropped", "collection")
            yield

    def _transaction(self):
        return _Transaction(self._db)

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, values: dict[str, str]) -> None:
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())

    def _remove_rows(self, rows: list[int]) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        self._codes.remove_ids(rows)
        self._bits.remove_ids(rows)

    def _rows(self, where: Where) -> np.ndarray:
        clause, params = where
        return np.fromiter((row for (row,) in self._db.execute(f"SELECT row FROM items WHERE {clause}", params)), np.int64)

    def _select(self, condition: str, params: list) -> list[StoredItem]:
        query = f"SELECT row, id, label, metadata, code, bits, image FROM items WHERE {condition}"
        return [
            StoredItem(row, item_id, label, json.loads(metadata), np.frombuffer(code, np.float32), np.frombuffer(bits, np.uint8), image)
            for row, item_id, label, metadata, code, bits, image in self._db.execute(query, params)
        ]

    def _existing(self, ids: list[str]) -> set[str]:
        found = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = f"SELECT id FROM items WHERE id IN ({','.join('?' * len(chunk))})"
            found.update(row[0] for row in self._db.execute(query, chunk))
        return found

    def _load_faiss(self):
        stamp = self._directory / "faiss.stamp"
        if stamp.is_file() and stamp.read_text() == self._meta("writes"):
            return faiss.read_index(str(self._directory / "codes.faiss")), faiss.read_index_binary(str(self._directory / "bits.faiss"))
        codes = faiss.IndexIDMap2(faiss.IndexFlatL2(self.binding.code_dim))
        bits = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(8 * -(-self.binding.num_bits // 8)))
        stored = self._db.execute("SELECT row, code, bits FROM items ORDER BY row").fetchall()
        if stored:
            rows = np.asarray([r[0] for r in stored], dtype=np.int64)
            codes.add_with_ids(np.stack([np.frombuffer(r[1], np.float32) for r in stored]), rows)
            bits.add_with_ids(np.stack([np.frombuffer(r[2], np.uint8) for r in stored]), rows)
        return codes, bits

    def _hits(self, distances, rows, exclude_row, k) -> list[Hit]:
        wanted = [(int(r), float(d)) for r, d in zip(rows, distances) if r >= 0 and r != exclude_row][:k]
        if not wanted:
            return []
        query = f"SELECT row, id, label, metadata FROM items WHERE row IN ({','.join('?' * len(wanted))})"
        found = {r: (i, label, json.loads(m)) for r, i, label, m in self._db.execute(query, [r for r, _ in wanted])}
        return [Hit(found[r][0], d, found[r][1], found[r][2]) for r, d in wanted if r in found]


def _lock_directory(directory: Path) -> TextIO:
    """The open lock file of `directory`, locked for this process and naming it; IndexLocked if another holds it."""
    lock_file = open(directory / ".lock", "a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "another process"
        lock_file.close()
        raise IndexLocked(f"the index at {directory} is in use by {holder}; one gateway per data directory") from None
    lock_file.truncate(0)
    lock_file.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    lock_file.flush()
    return lock_file


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on error; every write also bumps the `writes` counter."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self):
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, error, traceback):
        if kind is None:
            self._db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'writes'")
            self._db.execute("COMMIT")
        else:
            self._db.execute("ROLLBACK")
        return False
