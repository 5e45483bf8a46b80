"""The search capability: named collections of items (serving/collections.py), each fed by the encoder
version it is bound to, searched with filters and in batches, and label propagation over the stored codes."""
import asyncio
import base64
import logging
import threading
import time

import numpy as np

from latentserve.contract import ENCODE
from latentserve.datasets import load_mnist
from latentserve.v1 import common_pb2, search_pb2, search_pb2_grpc
from serving import tracing, validation
from serving.capability import Capability, Inference, decode_image_list
from serving.encoding import Encoding
from serving.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from serving.collections import DEFAULT, Collections, collection_name
from serving.filters import Filter, parse as parse_filter
from serving.index import Binding, Closed, CodeIndex, Hit, IndexOptions, NewItem, StoredItem
from serving.label_propagation import Method, Stopped, knn_graph, propagate
from serving.settings import Settings

log = logging.getLogger(__name__)
GALLERY_MARK = "gallery:mnist-test"
GALLERY_BATCH = 1000
REINDEX_BATCH = 256  # items encoded at a time by a reindex
RESPONSE_MARGIN_BYTES = 64 * 1024  # what a page of items leaves free of max_message_bytes
PROPAGATION_METHODS = {
    search_pb2.PROPAGATION_UNSPECIFIED: "spreading",
    search_pb2.PROPAGATION_SPREADING: "spreading",
    search_pb2.PROPAGATION_HARMONIC: "harmonic",
}


class Search(Capability):
    def __init__(self, settings: Settings, inference: Inference, encoding: Encoding):
        super().__init__(settings, inference)
        self.encoding = encoding
        self._collections: Collections | None = None
        # by collection: (the index being rebuilt, the progress), running or the last failure
        self._reindexing: dict[str, tuple[CodeIndex, search_pb2.Reindex]] = {}
        self._tasks: dict[str, asyncio.Task] = {}  # running reindexes
        self._gates: dict[str, asyncio.Lock] = {}  # by collection: a reindex holds it while it switches

    def servicer(self):
        return SearchServicer(self)

    @property
    def collections(self) -> Collections:
        if self._collections is None:
            raise Unavailable("the search index is still loading")
        return self._collections

    @property
    def index(self) -> CodeIndex:
        """The default collection."""
        return self.collections.get(DEFAULT)

    async def open(self) -> None:
        """Open the collections (the default one created, bound to the newest version of the index model,
        if new), seeding the gallery once; waits for the index model to have a version ready."""
        settings = self.settings
        if not any(e.model == settings.index_model and e.capability == ENCODE for e in self.inference.entries().values()):
            raise NotFound(f"no encoder {settings.index_model!r} in {settings.model_repository}", "index_model")
        while not self.encoding.ready():
            log.info("waiting for %s to be ready", settings.index_model)
            await asyncio.sleep(settings.health_poll_seconds)
        binding = Binding(settings.index_model, *self.encoding.signature(settings.index_model, 0))
        if settings.index_backend == "milvus":
            from serving.milvus_index import MilvusCollections  # pymilvus: the milvus extra, imported only when used

            collections = MilvusCollections(settings.milvus_uri)
        else:
            collections = Collections(settings.data_dir)
        await asyncio.to_thread(collections.open, binding)
        index = collections.get(DEFAULT)
        if settings.gallery == "mnist-test" and not index.is_marked(GALLERY_MARK):
            await self._seed_mnist_test(index)
        self._collections = collections
        log.info("ready: %d items in the default collection, %d collections", len(index), len(collections.names()))

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._collections is not None:
            await asyncio.to_thread(self._collections.close)

    async def _seed_mnist_test(self, index: CodeIndex) -> None:
        """One transaction with the mark, so an interrupted start seeds again from scratch."""
        test = (await asyncio.to_thread(load_mnist)).test
        batches = [await self.encode(index, test.images[i : i + GALLERY_BATCH, None]) for i in range(0, len(test.labels), GALLERY_BATCH)]
        values = np.concatenate([codes.values for codes in batches])
        bits = np.concatenate([codes.bits for codes in batches])
        items = [NewItem(f"mnist-test-{i:05d}", values[i], bits[i], int(label)) for i, label in enumerate(test.labels)]
        await asyncio.to_thread(index.add, items, GALLERY_MARK)
        log.info("seeded the index with %d MNIST test images", len(items))

    async def encode(self, index: CodeIndex, images: np.ndarray, timeout: float | None = None):
        """Codes of `images` by the encoder version `index` is bound to."""
        binding = index.binding
        try:
            return await self.encoding.encode(binding.model, binding.version, images, timeout)
        except NotFound:
            raise FailedPrecondition(
                f"the collection holds codes of {binding.model} version {binding.version}, which is not loaded"
            ) from None

    def ready(self) -> bool:
        """Whether the collections are open and the encoder version the default one is bound to is loaded."""
        if self._collections is None:
            return False
        binding = self.index.binding
        return any(e.model == binding.model and e.capability == ENCODE and binding.version in e.versions for e in self.inference.entries().values())

    def _binding(self, model: str, version: int) -> Binding:
        """What a collection of `model`'s codes (`version`; 0: the newest loaded) is bound to."""
        if not any(e.model == model and e.capability == ENCODE for e in self.inference.entries().values()):
            raise NotFound(f"no encoder {validation.quoted(model)}", "model.name")
        return Binding(model, *self.encoding.signature(model, version))

    async def create_collection(self, name: str, model: str, version: int, options: IndexOptions) -> CodeIndex:
        return await asyncio.to_thread(self.collections.create, name, self._binding(model, version), options)

    async def drop_collection(self, name: str) -> None:
        await asyncio.to_thread(self.collections.drop, name)

    async def on_current(self, name: str, work):
        """`await work(index)` on collection `name`; once more on the new index if a reindex switched it
        under the call, so no call fails for it."""
        while True:
            index = self.collections.get(name)
            try:
                return await work(index)
            except Closed:
                if self.collections.get(name) is index:
                    raise

    def reindex_progress(self, name: str, index: CodeIndex) -> search_pb2.Reindex | None:
        """The running reindex of `index`, or the last one that failed; None once it switched, or when
        the collection is another one by now (dropped and created again)."""
        rebuilt, progress = self._reindexing.get(name, (None, None))
        return progress if rebuilt is index else None

    def _gate(self, name: str) -> asyncio.Lock:
        return self._gates.setdefault(name, asyncio.Lock())

    async def add(self, name: str, items: list, images: np.ndarray, replace: bool, timeout=None) -> int:
        """Encode and store `items` (Item messages, already checked) whose images are `images` in
        collection `name`; how many replaced stored ones (with `replace`, else a stored id is
        AlreadyExists)."""
        while True:
            index = self.collections.get(name)
            codes = await self.encode(index, images, timeout)
            async with self._gate(name):
                if self.collections.get(name) is index:  # else a reindex switched it meanwhile: encode again
                    with tracing.span("index", operation="add", collection=name, items=len(items)):
                        return await asyncio.to_thread(index.add, self._new_items(index, items, codes), None, replace)

    @staticmethod
    def _new_items(index: CodeIndex, items: list, codes) -> list[NewItem]:
        return [
            NewItem(item.id, values, bits, item.label if item.HasField("label") else None, dict(item.metadata),
                    item.image.SerializeToString() if index.keep_images else None)
            for item, values, bits in zip(items, codes.values, codes.bits)
        ]

    async def delete(self, name: str, ids: list[str], where: Filter | None) -> int:
        """Delete `ids` (all or nothing) or, with `where`, what it selects; how many."""
        async with self._gate(name):
            index = self.collections.get(name)
            with tracing.span("index", operation="delete", collection=name):
                if where is not None:
                    return await asyncio.to_thread(index.delete_where, where)
                await asyncio.to_thread(index.delete, ids)
                return len(ids)

    async def reindex(self, name: str, model: str, version: int) -> None:
        """Start building collection `name` again from its kept images with encoder (`model`, `version`)."""
        old = self.collections.get(name)
        if not old.keep_images:
            raise FailedPrecondition("the collection does not keep its images, so it cannot be built again", "collection")
        if name in self._tasks:
            raise FailedPrecondition("a reindex of this collection is running", "collection")
        binding = self._binding(model, version)
        directory, new = await asyncio.to_thread(self.collections.build, name, binding, old.options)
        self._reindexing[name] = old, search_pb2.Reindex(model=common_pb2.ModelRef(name=model, version=binding.version), total=len(old))
        self._tasks[name] = asyncio.create_task(self._rebuild(name, old, directory, new))

    async def _rebuild(self, name: str, old: CodeIndex, directory: str, new: CodeIndex) -> None:
        _, progress = self._reindexing[name]
        try:
            cursor = await self._carry_over(old, new, "", progress)
            async with self._gate(name):  # writes wait from here to the switch; searches go on
                await self._carry_over(old, new, cursor, progress)  # what was added or replaced meanwhile
                gone = await asyncio.to_thread(lambda: sorted(new.ids() - old.ids()))
                if gone:
                    await asyncio.to_thread(new.delete, gone)
                await asyncio.to_thread(self.collections.switch, name, directory, new)
            del self._reindexing[name]
            log.info("reindexed %s with %s version %d: %d items", name, new.binding.model, new.binding.version, len(new))
        except Exception as error:  # noqa: BLE001 - the collection stays on its old codes; the error is shown in its stats
            log.error("reindexing %s failed", name, exc_info=error)
            progress.error = str(error)[:1000]
            await asyncio.to_thread(self.collections.discard, directory, new)
        finally:
            del self._tasks[name]

    async def _carry_over(self, old: CodeIndex, new: CodeIndex, cursor: str, progress: search_pb2.Reindex) -> str:
        """Encode into `new` the items of `old` stored after `cursor`; the cursor of the last one."""
        while items := await asyncio.to_thread(old.page, cursor, REINDEX_BATCH):
            messages = [common_pb2.Image.FromString(item.image) for item in items]
            images = await decode_image_list(messages, [f"items[{i}].image" for i in range(len(items))], "items", self.settings)
            codes = await self.encode(new, images)
            stored = [NewItem(item.id, values, bits, item.label, item.metadata, item.image) for item, values, bits in zip(items, codes.values, codes.bits)]
            await asyncio.to_thread(new.add, stored, None, True)
            cursor = items[-1].cursor
            progress.done += len(items)
        return cursor

    async def search(self, index: CodeIndex, queries: list[tuple[str, object, str]], k: int, hashed: bool,
                     where: Filter | None, timeout: float | None = None) -> list[list[Hit]]:
        """The hits of each query: ("image", (1, 28, 28) array, field), ("code", values or packed bits
        already checked against the index, field) or ("id", a stored id, field); an id is left out of its
        own hits. Run through `on_current`, so a code query is checked against the index it runs on."""
        vectors, exclude = [None] * len(queries), [None] * len(queries)
        pictured = [i for i, (kind, _, _) in enumerate(queries) if kind == "image"]
        if pictured:
            codes = await self.encode(index, np.stack([queries[i][1] for i in pictured]), timeout)
            for j, i in enumerate(pictured):
                vectors[i] = codes.bits[j] if hashed else codes.values[j]
        named = [i for i, (kind, _, _) in enumerate(queries) if kind == "id"]
        if named:
            stored = {item.id: item for item in await asyncio.to_thread(index.get_items, [queries[i][1] for i in named])}
            for i in named:
                item = stored.get(queries[i][1])
                if item is None:
                    raise NotFound("no such item is stored", queries[i][2])
                vectors[i], exclude[i] = (item.bits if hashed else item.code), item.id
        for i, (kind, value, _) in enumerate(queries):
            if kind == "code":
                vectors[i] = value
        with tracing.span("index", operation="search", queries=len(queries), k=k, space="hash" if hashed else "code"):
            return await asyncio.to_thread(index.search, np.stack(vectors), hashed, k, exclude, where)

    async def propagate_labels(
        self, index: CodeIndex, labels: dict[str, int], neighbours: int, method: Method, max_items: int, timeout: float | None = None
    ) -> list[tuple[str, int, float]]:
        """(id, label, confidence) of every stored item, from the labels of a few (see label_propagation).
        The work stops within a step once the call is cancelled or `timeout` seconds have passed."""
        ids, codes = await asyncio.to_thread(index.codes)
        if len(ids) > max_items:
            raise ResourceExhausted(f"the index holds {len(ids)} items; propagation is limited to {max_items}")
        if len(ids) < 2:
            raise FailedPrecondition(f"the index holds {len(ids)} items; propagation needs at least 2")
        rows = {item_id: row for row, item_id in enumerate(ids)}
        missing = sorted(set(labels) - set(rows))
        if missing:
            raise NotFound(f"{len(missing)} of the labelled ids are not stored", "labels")
        classes = sorted(set(labels.values()))  # the given classes, as columns of the score matrix
        labelled = np.asarray([rows[item_id] for item_id in labels])
        columns = np.searchsorted(classes, list(labels.values()))

        cancelled = threading.Event()
        deadline = None if timeout is None else time.monotonic() + timeout

        def stop() -> bool:
            return cancelled.is_set() or (deadline is not None and time.monotonic() > deadline)

        def run() -> np.ndarray:
            return propagate(knn_graph(codes, neighbours, stop), labelled, columns, len(classes), method, stop=stop)

        try:
            scores = await asyncio.to_thread(run)
        except asyncio.CancelledError:
            cancelled.set()  # the thread sees it at its next step
            raise
        except Stopped:
            raise DeadlineExceeded("label propagation passed the call's deadline") from None
        best = scores.argmax(1)
        confidence = scores[np.arange(len(ids)), best]
        predicted = np.where(confidence > 0, np.asarray(classes)[best], -1)
        return list(zip(ids, predicted.tolist(), confidence.tolist()))



def _page_token(cursor: str) -> str:
    return base64.urlsafe_b64encode(cursor.encode()).decode()


def _cursor(token: str) -> str:
    """The cursor a page token carries ("" for the first page); the collection checks it."""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise InvalidArgument("not a page token this server gave", "page_token") from None


def _item_message(item: StoredItem, num_bits: int, with_image: bool) -> search_pb2.Item:
    message = search_pb2.Item(
        id=item.id, metadata=item.metadata, code=common_pb2.Code(values=item.code, bits=item.bits.tobytes(), num_bits=num_bits)
    )
    if item.label is not None:
        message.label = item.label
    if with_image and item.image is not None:
        message.image.ParseFromString(item.image)
    return message


def _hits_message(hits: list[Hit], response: search_pb2.SearchResponse) -> search_pb2.SearchResponse:
    """`response` with `hits` added, built in place: a message passed to a constructor is copied."""
    for hit in hits:
        added = response.hits.add(id=hit.id, distance=hit.distance, label=hit.label)
        for key, value in hit.metadata.items():  # a third faster than metadata.update, which goes through the ABC
            added.metadata[key] = value
    return response


INDEX_KINDS = {"exact": search_pb2.INDEX_KIND_EXACT, "ivf": search_pb2.INDEX_KIND_IVF, "hnsw": search_pb2.INDEX_KIND_HNSW}


def _stats(name: str, index: CodeIndex, reindex: search_pb2.Reindex | None) -> search_pb2.IndexStats:
    binding, options = index.binding, index.options
    return search_pb2.IndexStats(
        reindex=reindex,
        collection=name, items=len(index), model=common_pb2.ModelRef(name=binding.model, version=binding.version),
        code_dim=binding.code_dim, num_bits=binding.num_bits, keep_images=options.keep_images,
        index=search_pb2.IndexSpec(kind=INDEX_KINDS[options.kind], nlist=options.nlist, nprobe=options.nprobe, m=options.m, ef_search=options.ef_search),
        approximate=index.approximate,
    )


class SearchServicer(search_pb2_grpc.SearchServicer):
    def __init__(self, search: Search):
        self.search = search
        self.settings = search.settings

    def _named(self, collection: str) -> str:
        """The collection a request names, checked to exist (NOT_FOUND before anything else)."""
        name = collection_name(collection, "collection")
        self.search.collections.get(name)
        return name

    def _stats(self, name: str) -> search_pb2.IndexStats:
        index = self.search.collections.get(name)
        return _stats(name, index, self.search.reindex_progress(name, index))

    def _where(self, text: str) -> Filter | None:
        settings = self.settings
        return parse_filter(text, settings.max_filter_bytes, settings.max_filter_values, settings.max_filter_depth)

    def _options(self, request: search_pb2.CreateCollectionRequest) -> IndexOptions:
        settings, spec = self.settings, request.index
        ivf, hnsw = (spec.nlist, spec.nprobe), (spec.m, spec.ef_search)
        if spec.kind in (search_pb2.INDEX_KIND_UNSPECIFIED, search_pb2.INDEX_KIND_EXACT):
            if any(ivf + hnsw):
                raise InvalidArgument("nlist and nprobe are for INDEX_KIND_IVF, m and ef_search for INDEX_KIND_HNSW", "index")
            return IndexOptions(keep_images=request.keep_images)
        if spec.kind == search_pb2.INDEX_KIND_IVF:
            if any(hnsw):
                raise InvalidArgument("m and ef_search are for INDEX_KIND_HNSW", "index")
            nlist = validation.optional_count(spec.nlist, settings.ivf_nlist, settings.max_ivf_nlist, "index.nlist", "lists")
            nprobe = validation.optional_count(spec.nprobe, min(settings.ivf_nprobe, nlist), nlist, "index.nprobe", "lists")
            return IndexOptions(keep_images=request.keep_images, kind="ivf", nlist=nlist, nprobe=nprobe)
        if spec.kind == search_pb2.INDEX_KIND_HNSW:
            if any(ivf):
                raise InvalidArgument("nlist and nprobe are for INDEX_KIND_IVF", "index")
            if not 0 <= spec.m <= 64 or spec.m == 1:
                raise InvalidArgument(f"m {spec.m}; want 2 to 64 (0: the default)", "index.m")
            ef_search = validation.optional_count(spec.ef_search, settings.hnsw_ef_search, settings.max_hnsw_ef_search, "index.ef_search", "candidates")
            return IndexOptions(keep_images=request.keep_images, kind="hnsw", m=spec.m or settings.hnsw_m, ef_search=ef_search)
        raise InvalidArgument(f"unknown index kind {spec.kind}", "index.kind")

    def _code(self, index: CodeIndex, code: common_pb2.Code, hashed: bool, field: str) -> np.ndarray:
        binding = index.binding
        if hashed:
            if code.num_bits != binding.num_bits or len(code.bits) != binding.packed_bytes:
                raise InvalidArgument(f"want {binding.num_bits} bits in {binding.packed_bytes} bytes", f"{field}.bits")
            return np.frombuffer(code.bits, np.uint8)
        values = np.fromiter(code.values, np.float32)  # twice as fast as asarray on a repeated field
        if values.shape != (binding.code_dim,):
            raise InvalidArgument(f"{values.size} values; this collection holds {binding.code_dim}", f"{field}.values")
        if not np.isfinite(values).all():
            raise InvalidArgument("holds NaN or infinity", f"{field}.values")
        return values

    async def _search(self, request, queries: list, prefixes: list[str], field: str, context) -> list[list[Hit]]:
        """Hits of each query message (a SearchRequest or Query: an image, a code or an id), the fields
        they are named by in errors starting with their `prefixes`."""
        search, settings = self.search, self.settings
        name = self._named(request.collection)
        k = validation.optional_count(request.k, settings.default_k, settings.max_k, "k", "hits")
        hashed = request.space == search_pb2.SPACE_HASH
        where = self._where(request.filter)
        kinds = [query.WhichOneof("query") for query in queries]
        for i, kind in enumerate(kinds):
            if kind is None:
                raise InvalidArgument("set one of `image`, `code` or `id`", f"{prefixes[i]}query" if prefixes[i] else "query")
        pictured = [i for i, kind in enumerate(kinds) if kind == "image"]
        images = await decode_image_list([queries[i].image for i in pictured], [f"{prefixes[i]}image" for i in pictured], field, settings) if pictured else []
        decoded = dict(zip(pictured, images))

        def parsed(index: CodeIndex) -> list[tuple[str, object, str]]:
            """The queries for `index` (a code query is checked against its sizes)."""
            return [
                (kind, decoded[i] if kind == "image" else self._code(index, query.code, hashed, f"{prefixes[i]}code") if kind == "code"
                 else validation.item_id(query.id, settings.max_id_bytes, f"{prefixes[i]}id"), f"{prefixes[i]}{kind}")
                for i, (kind, query) in enumerate(zip(kinds, queries))
            ]

        return await search.on_current(name, lambda index: search.search(index, parsed(index), k, hashed, where, context.time_remaining()))

    async def Search(self, request, context):
        (hits,) = await self._search(request, [request], [""], "image", context)
        return _hits_message(hits, search_pb2.SearchResponse())

    async def SearchBatch(self, request, context):
        settings = self.settings
        queries = request.queries
        if not queries:
            raise InvalidArgument("must hold at least one query", "queries")
        validation.count(len(queries), settings.max_batch_images, "queries", "queries")
        k = validation.optional_count(request.k, settings.default_k, settings.max_k, "k", "hits")
        if len(queries) * k > settings.max_k:
            raise ResourceExhausted(f"{len(queries)} queries of {k} hits; the limit is {settings.max_k} hits a response (max_k)", "k")
        results = await self._search(request, list(queries), [f"queries[{i}]." for i in range(len(queries))], "queries", context)
        response = search_pb2.SearchBatchResponse()
        for hits in results:
            _hits_message(hits, response.results.add())
        return response

    async def _store(self, request, replace: bool, context) -> tuple[int, int]:
        """Checks and stores the request's items; (added, replaced)."""
        search, settings = self.search, self.settings
        name = collection_name(request.collection, "collection")
        index = search.collections.get(name)
        items = request.items
        if not items:
            raise InvalidArgument("must hold at least one item", "items")
        validation.count(len(items), settings.max_batch_images, "items", "items")
        validation.unique_ids([item.id for item in items], settings.max_id_bytes, "items[{}].id")
        sizes = [search_pb2.Hit(metadata=item.metadata).ByteSize() for item in items]  # as a Search hit will carry it
        for i, size in enumerate(sizes):
            if size > settings.max_metadata_bytes_per_item:
                raise ResourceExhausted(f"{size} bytes; the limit is {settings.max_metadata_bytes_per_item}", f"items[{i}].metadata")
        if sum(sizes) > settings.max_metadata_bytes_per_request:
            raise ResourceExhausted(f"{sum(sizes)} bytes of metadata; the limit is {settings.max_metadata_bytes_per_request}", "items")
        if index.keep_images:
            for i, item in enumerate(items):
                if item.image.ByteSize() > settings.max_kept_image_bytes:
                    raise ResourceExhausted(f"{item.image.ByteSize()} bytes; a kept image is at most {settings.max_kept_image_bytes}", f"items[{i}].image")
        images = await decode_image_list([item.image for item in items], [f"items[{i}].image" for i in range(len(items))], "items", settings)
        replaced = await search.add(name, list(items), images, replace, context.time_remaining())
        return len(items) - replaced, replaced

    async def AddItems(self, request, context):
        added, _ = await self._store(request, False, context)
        return search_pb2.AddItemsResponse(added=added)

    async def UpsertItems(self, request, context):
        added, replaced = await self._store(request, True, context)
        return search_pb2.UpsertItemsResponse(added=added, replaced=replaced)

    async def GetItems(self, request, context):
        settings = self.settings
        name = self._named(request.collection)
        ids = list(request.ids)
        if not ids:
            raise InvalidArgument("must hold at least one id", "ids")
        validation.count(len(ids), settings.max_batch_images, "ids", "ids")
        validation.unique_ids(ids, settings.max_id_bytes, "ids[{}]")

        async def get(current: CodeIndex):
            return current, await asyncio.to_thread(current.get_items, ids)

        index, items = await self.search.on_current(name, get)
        found = {item.id for item in items}
        response = search_pb2.GetItemsResponse(
            items=[_item_message(item, index.binding.num_bits, request.with_images) for item in items],
            missing=[item_id for item_id in ids if item_id not in found],
        )
        if response.ByteSize() > settings.max_message_bytes - RESPONSE_MARGIN_BYTES:
            raise ResourceExhausted(f"the {len(items)} items come to {response.ByteSize()} bytes, over max_message_bytes; ask for fewer", "ids")
        return response

    async def ListItems(self, request, context):
        settings = self.settings
        name = self._named(request.collection)
        size = validation.optional_count(request.page_size, settings.default_page_items, settings.max_page_items, "page_size", "items")
        after = _cursor(request.page_token)
        where = self._where(request.filter)

        async def page(current: CodeIndex):  # one more than asked: is there a next page?
            return current, await asyncio.to_thread(current.page, after, size + 1, where)

        index, items = await self.search.on_current(name, page)
        response, budget = search_pb2.ListItemsResponse(), settings.max_message_bytes - RESPONSE_MARGIN_BYTES
        for item in items[:size]:
            message = _item_message(item, index.binding.num_bits, request.with_images)
            budget -= message.ByteSize() + 8  # the field's tag and length
            if budget < 0 and response.items:
                break  # the rest on the next page
            response.items.append(message)
            last = item.cursor
        if len(response.items) < len(items):
            response.next_page_token = _page_token(last)
        return response

    async def DeleteItems(self, request, context):
        name = self._named(request.collection)
        ids = list(request.ids)
        if bool(ids) == bool(request.filter):
            raise InvalidArgument("set either `ids` or `filter`", "ids")
        if ids:
            validation.count(len(ids), self.settings.max_batch_images, "ids", "ids")
            validation.unique_ids(ids, self.settings.max_id_bytes, "ids[{}]")
        deleted = await self.search.delete(name, ids, self._where(request.filter))
        return search_pb2.DeleteItemsResponse(deleted=deleted)

    async def GetIndexStats(self, request, context):
        return self._stats(collection_name(request.collection, "collection"))

    async def CreateCollection(self, request, context):
        if not request.name:
            raise InvalidArgument("name the collection", "name")
        name = collection_name(request.name, "name")
        model = request.model.name or self.settings.index_model
        await self.search.create_collection(name, model, request.model.version, self._options(request))
        return self._stats(name)

    async def ListCollections(self, request, context):
        return search_pb2.ListCollectionsResponse(collections=[self._stats(name) for name in self.search.collections.names()])

    async def ReindexCollection(self, request, context):
        name = collection_name(request.collection, "collection")
        model = request.model.name or self.search.collections.get(name).binding.model
        await self.search.reindex(name, model, request.model.version)
        return self._stats(name)

    async def DropCollection(self, request, context):
        if not request.name:
            raise InvalidArgument("name the collection", "name")
        await self.search.drop_collection(collection_name(request.name, "name"))
        return search_pb2.DropCollectionResponse()

    async def PropagateLabels(self, request, context):
        settings = self.settings
        labels = dict(request.labels)
        if not labels:
            raise InvalidArgument("give at least one labelled item", "labels")
        for item_id, label in labels.items():
            validation.item_id(item_id, settings.max_id_bytes, "labels")
            if label < 0:
                raise InvalidArgument(f"label {label}; want 0 or more", "labels")
        classes = len(set(labels.values()))
        if classes > settings.max_propagation_classes:
            raise ResourceExhausted(f"{classes} classes; the limit is {settings.max_propagation_classes}", "labels")
        neighbours = validation.optional_count(
            request.neighbours, settings.default_graph_neighbours, settings.max_graph_neighbours, "neighbours", "neighbours"
        )
        if request.method not in PROPAGATION_METHODS:
            raise InvalidArgument(f"unknown method {request.method}", "method")
        predictions = await self.search.on_current(collection_name(request.collection, "collection"), lambda index: self.search.propagate_labels(
            index, labels, neighbours, PROPAGATION_METHODS[request.method], settings.max_propagation_items, context.time_remaining()
        ))

        def message(chunk: list[tuple[str, int, float]]) -> search_pb2.PropagateLabelsResponse:
            return search_pb2.PropagateLabelsResponse(predictions=[
                search_pb2.PredictedLabel(id=item_id, label=label, confidence=confidence) for item_id, label, confidence in chunk
            ])

        for start in range(0, len(predictions), settings.propagation_chunk_items):
            yield await asyncio.to_thread(message, predictions[start : start + settings.propagation_chunk_items])
