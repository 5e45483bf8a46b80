"""The search index: FAISS in memory, SQLite on disk.

Every AddItems / DeleteItems is one SQLite transaction (WAL journal, synchronous=FULL) committed before
the call returns, so a restart loses nothing acknowledged and a crash mid-write leaves the previous state.
The FAISS indexes, keyed by the item's row, are written to disk on a clean close, stamped with the
store's write count; on open they are read back if the stamp matches and rebuilt from SQLite if not (after
a crash). An exact collection searches flat indexes (L2 over real codes, Hamming over packed bits). An
IVF collection is exact until it holds TRAIN_PER_LIST x nlist items; the write that reaches that trains
IndexIVFFlat and IndexBinaryIVF on every stored code, and from then on they answer unfiltered searches.
An HNSW collection keeps IndexHNSWFlat and IndexBinaryHNSW graphs from the start. FAISS cannot remove
from an HNSW graph: a deleted row stays in it as a tombstone, left out of every search by an IDSelector,
and the graph is rebuilt from SQLite when tombstones pass TOMBSTONE_SHARE of it at open.
The items' ids, labels and metadata are also kept in memory (item_table.py), loaded from SQLite at open:
hits read them there, and a filter selects its rows there. A filtered search stays inside the index (an
IDSelectorBitmap over the rows the filter selects). On IVF it probes `nprobe` lists and, if that finds
fewer hits than items match, all of them; on HNSW, if the graph search finds too few, it ranks the
matching rows exactly. FAISS's binary IVF takes no selector, so
filtered Hamming searches use the flat binary index, kept beside the approximate one.

One process at a time: an open index holds an exclusive lock on `.lock` in its directory, which names the
holder; the OS drops the lock when the holder closes the index or dies, so a lock is never stale.
"""
import fcntl
import json
import os
import socket
import sqlite3
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TextIO

import faiss
import numpy as np

from serving.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from serving.filters import Filter
from serving.item_table import ItemTable

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
TRAIN_PER_LIST = 30  # stored items per IVF list before an IVF collection trains (FAISS warns below 39)
HNSW_EF_CONSTRUCTION = 64  # candidates while building: recall 0.993 at ef_search 64, m 16, on 1M codes (bench search-scale)
TOMBSTONE_SHARE = 0.1
FILTERS_KEPT = 16  # filters whose selected rows (and FAISS selector) are kept, until the next write
LOAD_BATCH = 100_000  # rows read from SQLite at a time into the item table
SQLITE_PARAMETERS = 30_000  # in one statement; SQLite's limit is 32,766


class Closed(NotFound):
    """The index was closed under a call: its collection dropped, or switched to a rebuilt one."""


class IndexLocked(OSError):
    """Another process has the index open: one gateway per data directory."""


@dataclass(frozen=True)
class Binding:
    """What the codes in an index mean: which encoder version made them, and their sizes."""

    model: str
    version: int
    code_dim: int
    num_bits: int

    @property
    def packed_bytes(self) -> int:
        """Bytes of one binary code, packed 8 bits to a byte."""
        return -(-self.num_bits // 8)

    def stacked(self, items: list["NewItem"]) -> tuple[np.ndarray, np.ndarray]:
        """The items' codes (float32) and packed bits (uint8), one row each; FailedPrecondition if their
        sizes are not this binding's."""
        codes = np.stack([item.code for item in items]).astype(np.float32)
        bits = np.stack([item.bits for item in items]).astype(np.uint8)
        if codes.shape[1] != self.code_dim or bits.shape[1] != self.packed_bytes:
            raise FailedPrecondition(f"codes of shape {codes.shape[1:]} do not fit this index ({self})")
        return codes, bits


def already_stored(ids: list[str], stored) -> AlreadyExists:
    """The error of an add without replace that found the ids in `stored` (a set or dict of ids)."""
    first = next(i for i, item_id in enumerate(ids) if item_id in stored)
    return AlreadyExists(f"{len(stored)} already stored, the first items[{first}].id", "items.id")


def not_stored(ids: list[str], stored) -> NotFound:
    """The error of a delete whose `ids` are not all in `stored` (a set or dict of ids)."""
    missing = [i for i, item_id in enumerate(ids) if item_id not in stored]
    return NotFound(f"{len(missing)} not stored, the first ids[{missing[0]}]", "ids")


@dataclass(frozen=True)
class IndexOptions:
    """How a collection stores and searches, fixed when it is created."""

    keep_images: bool = False
    kind: str = "exact"  # "ivf" or "hnsw"
    nlist: int = 0  # IVF lists
    nprobe: int = 0  # IVF lists searched
    m: int = 0  # HNSW neighbours a node
    ef_search: int = 0  # HNSW candidates a search


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
    cursor: str  # where a page that ends with this item goes on from
    id: str
    label: int | None
    metadata: dict[str, str]
    code: np.ndarray
    bits: np.ndarray
    image: bytes | None


class Hit(NamedTuple):  # a tuple: a response builds hundreds
    id: str
    distance: float
    label: int | None
    metadata: dict[str, str]


class CodeIndex:
    def __init__(self, directory: Path, binding: Binding | None, options: IndexOptions = IndexOptions()):
        """Open the index in `directory`, creating it for `binding` and `options` if new; an existing one
        keeps its own. Without `binding`, one that has none is FailedPrecondition."""
        directory.mkdir(parents=True, exist_ok=True)
        self._directory = directory
        self._lock_file = lock_directory(directory)
        self._lock = threading.RLock()  # one connection: reads must not see a write in progress
        self._closed = False
        self._selections: OrderedDict[Filter, tuple[np.ndarray, np.ndarray, faiss.IDSelector]] = OrderedDict()  # most recent last
        self._db = sqlite3.connect(directory / "items.sqlite", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        if "image" not in {column[1] for column in self._db.execute("PRAGMA table_info(items)")}:
            self._db.execute("ALTER TABLE items ADD COLUMN image BLOB")  # an index made before collections
        stored = self._meta("binding")
        if stored is None and binding is None:
            self._db.close()
            self._lock_file.close()
            raise FailedPrecondition(f"no index in {directory}")
        if stored is None:
            self._set_meta({"binding": json.dumps(binding.__dict__), "writes": "0", "options": json.dumps(options.__dict__)})
            stored = self._meta("binding")
        self.binding = Binding(**json.loads(stored))
        self.options = IndexOptions(**json.loads(self._meta("options") or "{}"))  # none: made before collections
        self._load_faiss()
        self._table = self._load_table()

    # --- reads -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._bits.ntotal

    @property
    def keep_images(self) -> bool:
        return self.options.keep_images

    @property
    def approximate(self) -> bool:
        """Whether an IVF index (once trained) or HNSW graph answers unfiltered searches."""
        return self._bits_approximate is not None

    def search(self, queries: np.ndarray, hashed: bool, k: int, exclude_ids: list[str | None], where: Filter | None = None) -> list[list[Hit]]:
        """The k nearest items to each query (float32 codes, or packed bits when `hashed`), leaving out
        each query's `exclude_ids` entry; with `where`, only among the items it selects, so k hits come
        back whenever k items match."""
        wanted = k + any(item_id is not None for item_id in exclude_ids)
        with self._locked():
            selector, matching = None, len(self)
            if where is not None:
                rows, _, selector = self._selection(where)
                if not len(rows):
                    return [[] for _ in queries]
                matching = len(rows)
            kind = self.options.kind if self.approximate else "exact"
            if hashed and (selector is not None or kind == "exact"):
                distances, rows = self._bits.search(queries, wanted, params=faiss.SearchParameters(sel=selector) if selector else None)
            elif hashed and kind == "ivf":
                distances, rows = self._bits_approximate.search(queries, wanted)
            elif kind == "ivf":
                distances, rows = self._codes.search(queries, wanted, params=faiss.SearchParametersIVF(sel=selector, nprobe=self.options.nprobe))
                if selector is not None and ((rows >= 0).sum(1) < min(wanted, matching)).any():
                    # the probed lists held too few matches: probe them all (exact over the matches)
                    distances, rows = self._codes.search(queries, wanted, params=faiss.SearchParametersIVF(sel=selector, nprobe=self.options.nlist))
            elif kind == "hnsw":
                graph = self._bits_approximate if hashed else self._codes
                live = selector or (faiss.IDSelectorNot(faiss.IDSelectorBatch(np.fromiter(self._tombstones, np.int64))) if self._tombstones else None)
                distances, rows = graph.search(queries, wanted, params=faiss.SearchParametersHNSW(sel=live, efSearch=max(self.options.ef_search, wanted)))
                if selector is not None and ((rows >= 0).sum(1) < min(wanted, matching)).any():
                    distances, rows = self._exactly(queries, wanted, self._selection(where)[0])  # the graph strayed from the few matches
            else:
                distances, rows = self._codes.search(queries, wanted, params=faiss.SearchParameters(sel=selector) if selector else None)
            return self._hits(distances, rows, exclude_ids, k)

    def get_items(self, ids: list[str]) -> list[StoredItem]:
        """The stored items among `ids`, in their order."""
        with self._locked():
            found = {item.id: item for item in self._select("id IN ({})".format(",".join("?" * len(ids))), ids)} if ids else {}
        return [found[item_id] for item_id in ids if item_id in found]

    def page(self, after: str, size: int, where: Filter | None = None) -> list[StoredItem]:
        """Up to `size` items stored after the item whose cursor is `after` ("" for the first page), in the
        order they were stored."""
        if not (after == "" or (after.isascii() and after.isdigit() and int(after) < 2**63)):
            raise InvalidArgument("not a page token this server gave", "page_token")
        with self._locked():
            if where is None:
                return self._select("row > ? ORDER BY row LIMIT ?", [int(after or 0), size])
            rows = self._selection(where)[0]
            chosen = rows[np.searchsorted(rows, int(after or 0), side="right"):][:size].tolist()
            return self._select("row IN ({}) ORDER BY row".format(",".join("?" * len(chosen))), chosen)

    def ids(self) -> set[str]:
        with self._locked():
            return {item_id for (item_id,) in self._db.execute("SELECT id FROM items")}

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
        codes, bits = self.binding.stacked(items)
        texts = [json.dumps(item.metadata) for item in items]
        with self._locked():
            existing = self._existing(ids)
            if existing and not replace:
                raise already_stored(ids, existing)
            with self._transaction():
                replaced = [self._db.execute("DELETE FROM items WHERE id = ? RETURNING row", (i,)).fetchone()[0] for i in existing]
                rows = [
                    self._db.execute(
                        "INSERT INTO items (id, label, metadata, code, bits, image) VALUES (?, ?, ?, ?, ?, ?) RETURNING row",
                        (item.id, item.label, text, code.tobytes(), packed.tobytes(), item.image if self.keep_images else None),
                    ).fetchone()[0]
                    for item, text, code, packed in zip(items, texts, codes, bits)
                ]
                if mark:
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, '1')", (mark,))
            self._remove_rows(replaced)
            self._index_rows(np.asarray(rows, dtype=np.int64), codes, bits)
            self._table.add(rows, ids, [item.label for item in items], texts)
            if self.options.kind == "ivf" and not self.approximate and len(self) >= TRAIN_PER_LIST * self.options.nlist:
                self._train_ivf()
            return len(replaced)

    def delete(self, ids: list[str]) -> None:
        """All or nothing: an unknown id deletes nothing."""
        with self._locked():
            existing = self._existing(ids)
            if len(existing) < len(set(ids)):
                raise not_stored(ids, existing)
            with self._transaction():
                rows = [self._db.execute("DELETE FROM items WHERE id = ? RETURNING row", (i,)).fetchone()[0] for i in ids]
            self._remove_rows(rows)

    def delete_where(self, where: Filter) -> int:
        """Every item `where` selects, in one transaction; how many."""
        with self._locked():
            rows = self._selection(where)[0].tolist()
            with self._transaction():
                for start in range(0, len(rows), SQLITE_PARAMETERS):
                    chunk = rows[start : start + SQLITE_PARAMETERS]
                    self._db.execute("DELETE FROM items WHERE row IN ({})".format(",".join("?" * len(chunk))), chunk)
            self._remove_rows(rows)
            return len(rows)

    def close(self) -> None:
        """Snapshot the FAISS indexes so the next open needs no rebuild."""
        with self._lock:
            if self._closed:
                return
            writes = self._meta("writes")
            saved = [(self._codes, "codes.faiss", faiss.write_index), (self._bits, "bits.faiss", faiss.write_index_binary)]
            if self._bits_approximate is not None:
                saved.append((self._bits_approximate, "bits_approximate.faiss", faiss.write_index_binary))
            for index, name, write in saved:
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
        """The index to itself; Closed once closed (its collection dropped or rebuilt while a call held it)."""
        with self._lock:
            if self._closed:
                raise Closed("the collection was dropped", "collection")
            yield

    def _transaction(self):
        self._selections.clear()  # a write changes what the filters select
        return _Transaction(self._db)

    def _selection(self, where: Filter) -> tuple[np.ndarray, np.ndarray, faiss.IDSelector]:
        """The rows `where` selects, in order, and a FAISS selector of them (with the bitmap it reads);
        the FILTERS_KEPT most recent are kept for the searches that repeat them."""
        if where in self._selections:
            self._selections.move_to_end(where)
        else:
            mask = self._table.select(where)
            bitmap = np.packbits(mask, bitorder="little")
            self._selections[where] = np.flatnonzero(mask), bitmap, faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap))
            if len(self._selections) > FILTERS_KEPT:
                self._selections.popitem(last=False)
        return self._selections[where]

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, values: dict[str, str]) -> None:
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())

    def _index_rows(self, rows: np.ndarray, codes: np.ndarray, bits: np.ndarray) -> None:
        self._codes.add_with_ids(codes, rows)
        self._bits.add_with_ids(bits, rows)
        if self._bits_approximate is not None:
            self._bits_approximate.add_with_ids(bits, rows)

    def _remove_rows(self, rows: list[int]) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        self._table.remove(rows)
        self._bits.remove_ids(rows)
        if self.options.kind == "hnsw":
            self._tombstones.update(rows.tolist())
            return
        for index in (self._codes, self._bits_approximate):
            if index is not None:
                index.remove_ids(rows)

    def _exactly(self, queries: np.ndarray, wanted: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distances, rows) of the `wanted` nearest of `rows` by L2, from their codes in the graph."""
        distances, nearest = faiss.knn(queries, self._codes.reconstruct_batch(rows), min(wanted, len(rows)))
        found = np.where(nearest >= 0, rows[np.maximum(nearest, 0)], -1)
        return distances, found

    def _stored(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, codes, bits) of every stored item."""
        stored = self._db.execute("SELECT row, code, bits FROM items ORDER BY row").fetchall()
        if not stored:
            return np.zeros(0, np.int64), np.zeros((0, self.binding.code_dim), np.float32), np.zeros((0, self.binding.packed_bytes), np.uint8)
        return (np.asarray([r[0] for r in stored], dtype=np.int64), np.stack([np.frombuffer(r[1], np.float32) for r in stored]),
                np.stack([np.frombuffer(r[2], np.uint8) for r in stored]))

    def _train_ivf(self) -> None:
        """Replace the real codes' flat index by an IVF one, and add a binary IVF, both trained on every
        stored code."""
        rows, codes, bits = self._stored()
        nlist, size = self.options.nlist, 8 * self.binding.packed_bytes
        self._codes = faiss.IndexIVFFlat(faiss.IndexFlatL2(self.binding.code_dim), self.binding.code_dim, nlist, faiss.METRIC_L2)
        self._bits_approximate = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(size), size, nlist)
        self._bits_approximate.nprobe = self.options.nprobe
        self._codes.train(codes)
        self._bits_approximate.train(bits)
        self._codes.add_with_ids(codes, rows)
        self._bits_approximate.add_with_ids(bits, rows)

    def _select(self, condition: str, params: list) -> list[StoredItem]:
        query = f"SELECT row, id, label, metadata, code, bits, image FROM items WHERE {condition}"
        return [
            StoredItem(str(row), item_id, label, json.loads(metadata), np.frombuffer(code, np.float32), np.frombuffer(bits, np.uint8), image)
            for row, item_id, label, metadata, code, bits, image in self._db.execute(query, params)
        ]

    def _existing(self, ids: list[str]) -> set[str]:
        found = set()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            query = f"SELECT id FROM items WHERE id IN ({','.join('?' * len(chunk))})"
            found.update(row[0] for row in self._db.execute(query, chunk))
        return found

    def _load_faiss(self) -> None:
        stamp, directory, approximate = self._directory / "faiss.stamp", self._directory, self._directory / "bits_approximate.faiss"
        self._tombstones: set[int] = set()  # HNSW: rows deleted from SQLite, still in the graphs
        if stamp.is_file() and stamp.read_text() == self._meta("writes"):
            self._codes = faiss.read_index(str(directory / "codes.faiss"))
            self._bits = faiss.read_index_binary(str(directory / "bits.faiss"))
            self._bits_approximate = faiss.read_index_binary(str(approximate)) if approximate.is_file() else None
            if self.options.kind == "hnsw":
                self._tombstones = set(faiss.vector_to_array(self._codes.id_map).tolist()) - set(faiss.vector_to_array(self._bits.id_map).tolist())
            if len(self._tombstones) <= TOMBSTONE_SHARE * self._codes.ntotal:
                return
        size = 8 * self.binding.packed_bytes
        if self.options.kind == "hnsw":
            graphs = faiss.IndexHNSWFlat(self.binding.code_dim, self.options.m), faiss.IndexBinaryHNSW(size, self.options.m)
            for graph in graphs:
                graph.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            self._codes, self._bits_approximate = faiss.IndexIDMap2(graphs[0]), faiss.IndexBinaryIDMap2(graphs[1])
        else:
            self._codes = faiss.IndexIDMap2(faiss.IndexFlatL2(self.binding.code_dim))
            self._bits_approximate = None
        self._bits = faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(size))
        self._tombstones = set()
        approximate.unlink(missing_ok=True)  # a stale one must not be read with the next stamp
        rows, codes, bits = self._stored()
        self._index_rows(rows, codes, bits)
        if self.options.kind == "ivf" and len(rows) >= TRAIN_PER_LIST * self.options.nlist:
            self._train_ivf()

    def _hits(self, distances: np.ndarray, rows: np.ndarray, exclude_ids: list[str | None], k: int) -> list[list[Hit]]:
        """The hits of each query from FAISS's (distances, rows), where missing hits (-1) come last."""
        found = rows >= 0
        items = self._table.hits(rows[found])
        hits, start = [], 0
        for count, query_distances, exclude_id in zip(found.sum(1).tolist(), distances.tolist(), exclude_ids):
            query_items, start = items[start : start + count], start + count
            hits.append([Hit(item_id, distance, label, metadata) for (item_id, label, metadata), distance in zip(query_items, query_distances) if item_id != exclude_id][:k])
        return hits

    def _load_table(self) -> ItemTable:
        table = ItemTable()
        stored = self._db.execute("SELECT row, id, label, metadata FROM items ORDER BY row")
        while batch := stored.fetchmany(LOAD_BATCH):
            rows, ids, labels, texts = zip(*batch)
            table.add(list(rows), list(ids), list(labels), list(texts))
        return table


def lock_directory(directory: Path) -> TextIO:
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
