"""The search collections on Milvus, through pymilvus: Milvus Lite (a local `.db` file) on one machine and
in tests, or Milvus standalone or a cluster (an `http://host:19530` URI) behind several gateways.
MilvusCollections and MilvusIndex answer as Collections and CodeIndex do (serving/collections.py, index.py).

Each collection is a Milvus collection `ls_<name>_<12 hex>` whose description holds its binding and options
as JSON. The catalog collection `ls_catalog` maps each name to its Milvus collection (Milvus Lite has no
aliases) and holds the marks; a reindex switches a name by rewriting its catalog row, and every gateway
reads the names from it. A gateway that finds its collection dropped or switched by another one looks the
name up again.

An item is a row: `row` INT64, the primary key, given by Milvus (auto_id) in increasing order, so pages go
in the order items were stored and a replaced item moves to the end, as on the embedded backend (the page
cursor is the row); `id` VARCHAR, kept unique by our own checks (Milvus does not check it); `label` INT64,
NO_LABEL for none (Milvus Lite has no nullable fields); `metadata` JSON; `code` FLOAT_VECTOR, searched by
squared L2 as FAISS does (FLAT, IVF_FLAT probing `nprobe` lists, or HNSW with `ef_search` candidates,
which Milvus Lite lacks); `bits` BINARY_VECTOR, by Hamming (BIN_FLAT, Milvus Lite's only binary index);
`image` VARCHAR, the kept image in base64 ("" for none). A VARCHAR holds at most 65,535 bytes, so a kept
image is at most MAX_IMAGE_BYTES (48 KiB; a 28x28 digit takes about 1 KiB): a bigger one is
RESOURCE_EXHAUSTED on `items[i].image`. A Milvus filter cannot name an id with a line break (see
serving.filters.milvus_string): such an id is INVALID_ARGUMENT on `items[i].id`, and never found.

Milvus has no transactions. A replace inserts the new rows, then deletes the old ones: a crash in between
leaves an id on two rows (get and search show the newer) until the id is written again. A mark is written
after its items, and an add with a mark replaces what it finds, so an add cut short before its mark runs
again cleanly. The existence checks of add and delete hold against the other writes of this gateway, not
those of other gateways. `approximate` is true once Milvus reports IVF- or HNSW-indexed rows: Milvus Lite
never does (it searches every row exactly).

Milvus Lite serves one process a file: the first one to open it takes an exclusive lock on `.lock` in its
directory (serving.index), since a second process's failed open deletes Milvus Lite's own lock; only then
does it remove collections no name points to (creations and rebuilds cut short by a stop).
"""
import base64
import json
import logging
import threading
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import ErrorCode, MilvusException

from serving.collections import DEFAULT
from serving.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from serving.filters import NO_LABEL, Filter, milvus_string, to_milvus
from serving.index import (
    HNSW_EF_CONSTRUCTION, Binding, Closed, Hit, IndexLocked, IndexOptions, NewItem, StoredItem, already_stored, lock_directory, not_stored,
)

log = logging.getLogger(__name__)
PREFIX = "ls_"
CATALOG = "ls_catalog"
TIMEOUT_SECONDS = 30  # on every call: without one, pymilvus retries some errors for minutes
MAX_VARCHAR = 65_535  # bytes in a Milvus VARCHAR
MAX_IMAGE_BYTES = MAX_VARCHAR // 4 * 3  # whose base64 fits one VARCHAR
ROWS_WITH_IMAGES = 256  # rows a query or insert carries with images: 16 MiB at most (a query result must stay under 64 MiB)
ROWS = 4096  # rows a query carries without images (Milvus returns at most 16,384)
IDS_PER_FILTER = 256  # ids in one `id in [...]`
ITEM_FIELDS = ["id", "label", "metadata", "code", "bits", "image"]


class MilvusIndex:
    """One collection's items in one Milvus collection; the methods and errors of CodeIndex."""

    def __init__(self, client: MilvusClient, collection: str, binding: Binding, options: IndexOptions):
        self.binding, self.options, self.collection = binding, options, collection
        self.closed = False
        self._client = client
        self._writing = threading.Lock()  # an existence check and the write it allows, against this gateway's other writes

    # --- reads -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        (counted,) = self._call(self._client.query, self.collection, filter="", output_fields=["count(*)"])
        return counted["count(*)"]

    @property
    def keep_images(self) -> bool:
        return self.options.keep_images

    @property
    def approximate(self) -> bool:
        """Whether Milvus has built the IVF or HNSW index over some rows."""
        if self.options.kind == "exact":
            return False
        return self._call(self._client.describe_index, self.collection, index_name="code")["indexed_rows"] > 0

    def search(self, queries: np.ndarray, hashed: bool, k: int, exclude_ids: list[str | None], where: Filter | None = None) -> list[list[Hit]]:
        """As CodeIndex.search: k hits whenever k items match `where`, each query's `exclude_ids` entry left out."""
        wanted = k + any(item_id is not None for item_id in exclude_ids)
        condition = to_milvus(where) if where is not None else ""
        vectors = [query.tobytes() for query in queries] if hashed else list(queries)
        found = self._search(vectors, hashed, condition, wanted, self.options.nprobe)
        shortest = min(map(len, found))
        if self.options.kind == "ivf" and not hashed and where is not None and shortest < wanted and shortest < self._count(condition):
            # the probed lists held too few matches: probe them all
            found = self._search(vectors, hashed, condition, wanted, self.options.nlist)
        return [self._hits(hits, exclude, k) for hits, exclude in zip(found, exclude_ids)]

    def get_items(self, ids: list[str]) -> list[StoredItem]:
        """The stored items among `ids`, in their order."""
        found = {}
        for chunk in _chunks([item_id for item_id in ids if _nameable(item_id)], IDS_PER_FILTER):
            found.update((row["id"], row) for row in self._scan(_id_in(chunk), ITEM_FIELDS))  # rows in order: the newer wins
        return [self._item(found[item_id]) for item_id in ids if item_id in found]

    def page(self, after: str, size: int, where: Filter | None = None) -> list[StoredItem]:
        """Up to `size` items stored after the item whose cursor is `after` ("" for the first page), in the
        order they were stored."""
        if not (after == "" or (after.isascii() and after.isdigit() and int(after) < 2**63)):
            raise InvalidArgument("not a page token this server gave", "page_token")
        condition = to_milvus(where) if where is not None else ""
        return [self._item(row) for row in self._scan(condition, ITEM_FIELDS, int(after or 0), size)]

    def ids(self) -> set[str]:
        return {row["id"] for row in self._scan("", ["id"])}

    def codes(self) -> tuple[list[str], np.ndarray]:
        """Every stored item's id and real-valued code, in the order they were added."""
        rows = list(self._scan("", ["id", "code"]))
        codes = np.asarray([row["code"] for row in rows], np.float32).reshape(len(rows), self.binding.code_dim)
        return [row["id"] for row in rows], codes

    def is_marked(self, key: str) -> bool:
        return bool(self._call(self._client.get, CATALOG, ids=[self._mark(key)]))

    # --- writes ------------------------------------------------------------------------------------
    def add(self, items: list[NewItem], mark: str | None = None, replace: bool = False) -> int:
        """As CodeIndex.add, but not all or nothing (see the module's notes); an add with a `mark` replaces
        what it finds. Returns how many items were replaced."""
        ids = [item.id for item in items]
        codes, bits = self.binding.stacked(items)
        if len(set(ids)) < len(ids):
            raise InvalidArgument("an id is given twice", "items")
        unnameable = [i for i, item_id in enumerate(ids) if not _nameable(item_id)]
        if unnameable:
            raise InvalidArgument("holds a line break, which the Milvus backend cannot look up", f"items[{unnameable[0]}].id")
        rows = [
            {"id": item.id, "label": NO_LABEL if item.label is None else item.label, "metadata": item.metadata,
             "code": code, "bits": packed.tobytes(), "image": self._image(item, i)}
            for i, (item, code, packed) in enumerate(zip(items, codes, bits))
        ]
        with self._writing:
            stored = self._rows(ids)
            if stored and not (replace or mark):
                raise already_stored(ids, stored)
            for chunk in _chunks(rows, ROWS_WITH_IMAGES):
                self._call(self._client.insert, self.collection, data=chunk)
            self._delete_rows([row for item_rows in stored.values() for row in item_rows])
            if mark:
                self._call(self._client.upsert, CATALOG, data=[_catalog_row(self._mark(mark), self.collection)])
            return len(stored)

    def delete(self, ids: list[str]) -> None:
        """All or nothing: an unknown id deletes nothing."""
        with self._writing:
            stored = self._rows(ids)
            if len(stored) < len(set(ids)):
                raise not_stored(ids, stored)
            self._delete_rows([row for item_rows in stored.values() for row in item_rows])

    def delete_where(self, where: Filter) -> int:
        """Every item `where` selects; how many."""
        with self._writing:
            found = list(self._scan(to_milvus(where), ["id"]))
            self._delete_rows([row["row"] for row in found])
            return len({row["id"] for row in found})

    def close(self) -> None:
        """Calls from now on raise Closed; a write in progress finishes first."""
        with self._writing:
            self.closed = True

    # --- internals ---------------------------------------------------------------------------------
    def _call(self, method, collection: str, **arguments):
        """`method(collection, ...)` of the client with our timeout; Closed once closed or once Milvus no
        longer has this index's collection (dropped or switched, by this gateway or another)."""
        if self.closed:
            raise Closed("the collection was dropped", "collection")
        try:
            return method(collection, timeout=TIMEOUT_SECONDS, **arguments)
        except MilvusException as error:
            if error.code != ErrorCode.COLLECTION_NOT_FOUND:
                raise
            self.closed = True
            raise Closed("the collection was dropped", "collection") from None

    def _search(self, vectors: list, hashed: bool, condition: str, limit: int, nprobe: int) -> list[list[dict]]:
        field, metric = ("bits", "HAMMING") if hashed else ("code", "L2")
        parameters = {} if hashed else {"ivf": {"nprobe": nprobe}, "hnsw": {"ef": max(self.options.ef_search, limit)}}.get(self.options.kind, {})
        return self._call(self._client.search, self.collection, data=vectors, anns_field=field, filter=condition, limit=limit,
                          output_fields=["id", "label", "metadata"], search_params={"metric_type": metric, "params": parameters})

    def _count(self, condition: str) -> int:
        (counted,) = self._call(self._client.query, self.collection, filter=condition, output_fields=["count(*)"])
        return counted["count(*)"]

    def _scan(self, condition: str, fields: list[str], after: int = 0, limit: int | None = None):
        """The rows after row `after` that `condition` selects, in row order, up to `limit`, fetched a
        bounded number at a time."""
        batch = ROWS_WITH_IMAGES if "image" in fields else ROWS
        while limit is None or limit > 0:
            size = batch if limit is None else min(batch, limit)
            selected = f"row > {after}" + (f" and ({condition})" if condition else "")
            rows = self._call(self._client.query, self.collection, filter=selected, output_fields=fields, limit=size)
            yield from rows
            if len(rows) < size:
                return
            after = rows[-1]["row"]
            limit = None if limit is None else limit - len(rows)

    def _rows(self, ids: list[str]) -> dict[str, list[int]]:
        """The rows of each stored id among `ids`."""
        stored = {}
        for chunk in _chunks([item_id for item_id in ids if _nameable(item_id)], IDS_PER_FILTER):
            for row in self._scan(_id_in(chunk), ["id"]):
                stored.setdefault(row["id"], []).append(row["row"])
        return stored

    def _delete_rows(self, rows: list[int]) -> None:
        for chunk in _chunks(rows, ROWS):
            self._call(self._client.delete, self.collection, ids=chunk)

    def _mark(self, key: str) -> str:
        return f"mark/{self.collection}/{key}"

    def _image(self, item: NewItem, i: int) -> str:
        if not self.keep_images or item.image is None:
            return ""
        if len(item.image) > MAX_IMAGE_BYTES:
            raise ResourceExhausted(f"{len(item.image)} bytes; a kept image is at most {MAX_IMAGE_BYTES} on Milvus", f"items[{i}].image")
        return base64.b64encode(item.image).decode()

    def _item(self, row: dict) -> StoredItem:
        (bits,) = row["bits"]  # a query gives a binary vector as a list holding its bytes
        return StoredItem(str(row["row"]), row["id"], _label(row["label"]), row["metadata"], np.asarray(row["code"], np.float32),
                          np.frombuffer(bits, np.uint8), base64.b64decode(row["image"]) if row["image"] else None)

    @staticmethod
    def _hits(found: list[dict], exclude_id: str | None, k: int) -> list[Hit]:
        hits, seen = [], {exclude_id}
        for hit in found:
            entity = hit["entity"]
            if entity["id"] not in seen:  # a replace in progress shows an id on two rows
                seen.add(entity["id"])
                hits.append(Hit(entity["id"], float(hit["distance"]), _label(entity["label"]), entity["metadata"]))
        return hits[:k]


class MilvusCollections:
    """The named collections on the Milvus at `uri`; the methods and errors of Collections. The handle of a
    built index is its Milvus collection's name."""

    def __init__(self, uri: str):
        self._uri = uri
        self._lite = uri.endswith(".db")  # as pymilvus tells a Milvus Lite file from a server
        self._client: MilvusClient | None = None
        self._lock_file = None
        self._open: dict[str, MilvusIndex] = {}
        self._lock = threading.Lock()  # changes to the names against each other

    def open(self, default_binding: Binding) -> None:
        """Connect (IndexLocked if another process has the Milvus Lite file), and create the catalog and the
        default collection (for `default_binding`) if new."""
        if self._lite:
            path = Path(self._uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = lock_directory(path.parent)
            try:
                self._client = MilvusClient(str(path), timeout=TIMEOUT_SECONDS)
            except MilvusException as error:  # another program has it open
                self._lock_file.close()
                raise IndexLocked(f"Milvus Lite could not open {path}: {error.message}") from None
        else:
            self._client = MilvusClient(self._uri, timeout=TIMEOUT_SECONDS)
        if not self._client.has_collection(CATALOG, timeout=TIMEOUT_SECONDS):
            self._create_catalog()
        if self._target(DEFAULT) is None:
            collection, _ = self.build(DEFAULT, default_binding, IndexOptions())
            self._set_target(DEFAULT, collection)
        if self._lite:
            self._remove_unnamed()

    def get(self, name: str) -> MilvusIndex:
        index = self._open.get(name)
        if index is not None and not index.closed:
            return index
        with self._lock:  # new here: made, switched or dropped by another gateway
            collection = self._target(name)
            if collection is None:
                raise NotFound("no such collection", "collection")
            index = self._open.get(name)
            if index is None or index.collection != collection:
                index = self._open[name] = self._index(collection)
            return index

    def names(self) -> list[str]:
        return sorted(self._named())

    def create(self, name: str, binding: Binding, options: IndexOptions) -> MilvusIndex:
        with self._lock:
            if self._target(name) is not None:
                raise AlreadyExists("a collection of this name exists", "name")
            collection, index = self.build(name, binding, options)
            self._set_target(name, collection)
            self._open[name] = index
            return index

    def build(self, name: str, binding: Binding, options: IndexOptions) -> tuple[str, MilvusIndex]:
        """A new, empty index in a Milvus collection of its own, not yet named: (collection, index)."""
        collection = f"{PREFIX}{name.replace('-', '_')}_{uuid.uuid4().hex[:12]}"  # Milvus names: letters, digits, '_'
        schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False,
                                            description=json.dumps({"binding": asdict(binding), "options": asdict(options)}))
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("id", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("label", DataType.INT64)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("code", DataType.FLOAT_VECTOR, dim=binding.code_dim)
        schema.add_field("bits", DataType.BINARY_VECTOR, dim=8 * binding.packed_bytes)
        schema.add_field("image", DataType.VARCHAR, max_length=MAX_VARCHAR)
        indexes = self._client.prepare_index_params()
        if options.kind == "ivf":
            indexes.add_index(field_name="code", index_type="IVF_FLAT", metric_type="L2", params={"nlist": options.nlist})
        elif options.kind == "hnsw":
            if self._lite:
                raise FailedPrecondition("Milvus Lite has no HNSW index: use INDEX_KIND_IVF, or Milvus standalone", "index.kind")
            indexes.add_index(field_name="code", index_type="HNSW", metric_type="L2", params={"M": options.m, "efConstruction": HNSW_EF_CONSTRUCTION})
        else:
            indexes.add_index(field_name="code", index_type="FLAT", metric_type="L2")
        indexes.add_index(field_name="bits", index_type="BIN_FLAT", metric_type="HAMMING")
        self._client.create_collection(collection, schema=schema, index_params=indexes, timeout=TIMEOUT_SECONDS)
        return collection, MilvusIndex(self._client, collection, binding, options)

    def switch(self, name: str, collection: str, index: MilvusIndex) -> None:
        """Point `name` at `index` (made by `build`, in `collection`), and drop what it pointed to."""
        with self._lock:
            old = self._target(name)
            self._set_target(name, collection)
            if name in self._open:
                self._open[name].close()  # calls holding it get NOT_FOUND
            self._open[name] = index
            self._drop(old)

    def discard(self, collection: str, index: MilvusIndex) -> None:
        """Drop an index made by `build` that will not be switched to."""
        index.close()
        self._drop(collection)

    def drop(self, name: str) -> None:
        if name == DEFAULT:
            raise FailedPrecondition("the default collection cannot be dropped; delete its items instead")
        with self._lock:
            collection = self._target(name)
            if collection is None:
                raise NotFound("no such collection", "collection")
            self._client.delete(CATALOG, ids=[f"name/{name}"], timeout=TIMEOUT_SECONDS)
            if name in self._open:
                self._open.pop(name).close()
            self._drop(collection)

    def close(self) -> None:
        for index in self._open.values():
            index.close()
        self._client.close()
        if self._lite:  # stop the Milvus Lite server (closing the client leaves it running), so others may open the file
            from milvus_lite.server_manager import server_manager_instance

            server_manager_instance.release_server(self._uri)
            self._lock_file.close()

    # --- internals ---------------------------------------------------------------------------------
    def _create_catalog(self) -> None:
        """Rows `name/<name>` (a collection's name -> its Milvus collection) and `mark/<collection>/<key>`."""
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=MAX_VARCHAR)
        schema.add_field("target", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)  # Milvus collections need a vector field
        indexes = self._client.prepare_index_params()
        indexes.add_index(field_name="unused", index_type="FLAT", metric_type="L2")
        self._client.create_collection(CATALOG, schema=schema, index_params=indexes, timeout=TIMEOUT_SECONDS)

    def _named(self) -> dict[str, str]:
        """Each name -> its Milvus collection."""
        rows = self._client.query(CATALOG, filter='key like "name/%"', output_fields=["target"], limit=ROWS, timeout=TIMEOUT_SECONDS)
        return {row["key"].removeprefix("name/"): row["target"] for row in rows}

    def _target(self, name: str) -> str | None:
        rows = self._client.get(CATALOG, ids=[f"name/{name}"], output_fields=["target"], timeout=TIMEOUT_SECONDS)
        return rows[0]["target"] if rows else None

    def _set_target(self, name: str, collection: str) -> None:
        self._client.upsert(CATALOG, data=[_catalog_row(f"name/{name}", collection)], timeout=TIMEOUT_SECONDS)

    def _index(self, collection: str) -> MilvusIndex:
        stored = json.loads(self._client.describe_collection(collection, timeout=TIMEOUT_SECONDS)["description"])
        return MilvusIndex(self._client, collection, Binding(**stored["binding"]), IndexOptions(**stored["options"]))

    def _drop(self, collection: str) -> None:
        """A Milvus collection and its marks."""
        self._client.drop_collection(collection, timeout=TIMEOUT_SECONDS)
        self._client.delete(CATALOG, filter=f"target == {milvus_string(collection)}", timeout=TIMEOUT_SECONDS)

    def _remove_unnamed(self) -> None:
        named = set(self._named().values())
        for collection in self._client.list_collections(timeout=TIMEOUT_SECONDS):
            if collection.startswith(PREFIX) and collection != CATALOG and collection not in named:
                log.warning("dropping Milvus collection %s: no collection name points to it (cut short by a stop)", collection)
                self._drop(collection)


def _catalog_row(key: str, target: str) -> dict:
    return {"key": key, "target": target, "unused": [0.0, 0.0]}


def _label(stored: int) -> int | None:
    return None if stored == NO_LABEL else stored


def _nameable(item_id: str) -> bool:
    """Whether a Milvus filter can name `item_id` (no line break: see milvus_string); no other is ever stored."""
    return "\n" not in item_id and "\r" not in item_id


def _id_in(ids: list[str]) -> str:
    return f"id in [{', '.join(map(milvus_string, ids))}]"


def _chunks(values: list, size: int):
    return (values[start : start + size] for start in range(0, len(values), size))
