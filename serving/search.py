"""The search capability: the code index, fed by the encoder version it is bound to, and label
propagation over the stored codes."""
import asyncio
import logging
import threading
import time

import numpy as np

from latentserve.contract import ENCODE
from latentserve.datasets import load_mnist
from latentserve.v1 import common_pb2, search_pb2, search_pb2_grpc
from serving import validation
from serving.capability import Capability, Inference, decode_image_list
from serving.encoding import Encoding
from serving.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from serving.index import Binding, CodeIndex, Hit, NewItem
from serving.label_propagation import Method, Stopped, knn_graph, propagate
from serving.settings import Settings

log = logging.getLogger(__name__)
GALLERY_MARK = "gallery:mnist-test"
GALLERY_BATCH = 1000
PROPAGATION_METHODS = {
    search_pb2.PROPAGATION_UNSPECIFIED: "spreading",
    search_pb2.PROPAGATION_SPREADING: "spreading",
    search_pb2.PROPAGATION_HARMONIC: "harmonic",
}


class Search(Capability):
    def __init__(self, settings: Settings, inference: Inference, encoding: Encoding):
        super().__init__(settings, inference)
        self.encoding = encoding
        self._index: CodeIndex | None = None

    def servicer(self):
        return SearchServicer(self)

    @property
    def index(self) -> CodeIndex:
        if self._index is None:
            raise Unavailable("the search index is still loading")
        return self._index

    async def open(self) -> None:
        """Open (or create, bound to the newest version of the index model) the index, seeding the gallery
        once; waits for the index model to have a version ready."""
        settings = self.settings
        if not any(e.model == settings.index_model and e.capability == ENCODE for e in self.inference.entries().values()):
            raise NotFound(f"no encoder {settings.index_model!r} in {settings.model_repository}", "index_model")
        while not self.encoding.ready():
            log.info("waiting for %s to be ready", settings.index_model)
            await asyncio.sleep(settings.health_poll_seconds)
        binding = Binding(settings.index_model, *self.encoding.signature(settings.index_model, 0))
        index = await asyncio.to_thread(CodeIndex, settings.data_dir / "index", binding)
        if settings.gallery == "mnist-test" and not index.is_marked(GALLERY_MARK):
            await self._seed_mnist_test(index)
        self._index = index
        log.info("ready: %d items in the index", len(index))

    async def close(self) -> None:
        if self._index is not None:
            await asyncio.to_thread(self._index.close)

    async def _seed_mnist_test(self, index: CodeIndex) -> None:
        """One transaction with the mark, so an interrupted start seeds again from scratch."""
        test = (await asyncio.to_thread(load_mnist)).test
        batches = [await self._encode(index, test.images[i : i + GALLERY_BATCH, None]) for i in range(0, len(test.labels), GALLERY_BATCH)]
        values = np.concatenate([codes.values for codes in batches])
        bits = np.concatenate([codes.bits for codes in batches])
        items = [NewItem(f"mnist-test-{i:05d}", values[i], bits[i], int(label)) for i, label in enumerate(test.labels)]
        await asyncio.to_thread(index.add, items, GALLERY_MARK)
        log.info("seeded the index with %d MNIST test images", len(items))

    async def _encode(self, index: CodeIndex, images: np.ndarray, timeout: float | None = None):
        binding = index.binding
        try:
            return await self.encoding.encode(binding.model, binding.version, images, timeout)
        except NotFound:
            raise FailedPrecondition(
                f"the index holds codes of {binding.model} version {binding.version}, which is not loaded"
            ) from None

    async def encode(self, images: np.ndarray, timeout: float | None = None):
        return await self._encode(self.index, images, timeout)

    def ready(self) -> bool:
        """Whether the index is open and the encoder version it is bound to is loaded."""
        if self._index is None:
            return False
        binding = self._index.binding
        return any(e.model == binding.model and e.capability == ENCODE and binding.version in e.versions for e in self.inference.entries().values())

    async def add(self, ids: list[str], images: np.ndarray, labels: list[int | None], metadata: list[dict], timeout=None) -> None:
        codes = await self.encode(images, timeout)
        items = [NewItem(*fields) for fields in zip(ids, codes.values, codes.bits, labels, metadata)]
        await asyncio.to_thread(self.index.add, items)

    async def delete(self, ids: list[str]) -> None:
        await asyncio.to_thread(self.index.delete, ids)

    async def by_image(self, image: np.ndarray, k: int, hashed: bool, timeout: float | None = None) -> list[Hit]:
        codes = await self.encode(image[None], timeout)
        return await self._search(codes.values[0], codes.bits[0], k, hashed, None)

    async def by_code(self, values: np.ndarray, bits: bytes, num_bits: int, k: int, hashed: bool) -> list[Hit]:
        binding = self.index.binding
        if hashed:
            if num_bits != binding.num_bits or len(bits) != -(-num_bits // 8):
                raise InvalidArgument(f"want {binding.num_bits} bits in {-(-binding.num_bits // 8)} bytes", "code.bits")
            return await self._search(None, np.frombuffer(bits, np.uint8), k, True, None)
        if values.shape != (binding.code_dim,):
            raise InvalidArgument(f"{values.size} values; this index holds {binding.code_dim}", "code.values")
        if not np.isfinite(values).all():
            raise InvalidArgument("holds NaN or infinity", "code.values")
        return await self._search(values, None, k, False, None)

    async def by_id(self, item_id: str, k: int, hashed: bool) -> list[Hit]:
        row, values, bits = await asyncio.to_thread(self.index.get, item_id)
        return await self._search(values, bits, k, hashed, row)

    async def _search(self, values, bits, k: int, hashed: bool, exclude_row: int | None) -> list[Hit]:
        if hashed:
            return await asyncio.to_thread(self.index.search_bits, bits, k, exclude_row)
        return await asyncio.to_thread(self.index.search_code, values, k, exclude_row)

    async def propagate_labels(
        self, labels: dict[str, int], neighbours: int, method: Method, max_items: int, timeout: float | None = None
    ) -> list[tuple[str, int, float]]:
        """(id, label, confidence) of every stored item, from the labels of a few (see label_propagation).
        The work stops within a step once the call is cancelled or `timeout` seconds have passed."""
        ids, codes = await asyncio.to_thread(self.index.codes)
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


class SearchServicer(search_pb2_grpc.SearchServicer):
    def __init__(self, search: Search):
        self.search = search
        self.settings = search.settings

    async def Search(self, request, context):
        search, settings = self.search, self.settings
        k = validation.optional_count(request.k, settings.default_k, settings.max_k, "k", "hits")
        hashed = request.space == search_pb2.SPACE_HASH
        kind = request.WhichOneof("query")
        if kind == "image":
            (image,) = await decode_image_list([request.image], ["image"], "image", settings)
            hits = await search.by_image(image, k, hashed, context.time_remaining())
        elif kind == "code":
            code = request.code
            hits = await search.by_code(np.asarray(code.values, np.float32), code.bits, code.num_bits, k, hashed)
        elif kind == "id":
            hits = await search.by_id(validation.item_id(request.id, settings.max_id_bytes, "id"), k, hashed)
        else:
            raise InvalidArgument("set one of `image`, `code` or `id`", "query")
        return search_pb2.SearchResponse(hits=[
            search_pb2.Hit(id=hit.id, distance=hit.distance, label=hit.label, metadata=hit.metadata) for hit in hits
        ])

    async def AddItems(self, request, context):
        search, settings = self.search, self.settings
        items = request.items
        if not items:
            raise InvalidArgument("must hold at least one item", "items")
        validation.count(len(items), settings.max_batch_images, "items", "items")
        ids = validation.unique_ids([item.id for item in items], settings.max_id_bytes, "items[{}].id")
        sizes = [search_pb2.Hit(metadata=item.metadata).ByteSize() for item in items]  # as a Search hit will carry it
        for i, size in enumerate(sizes):
            if size > settings.max_metadata_bytes_per_item:
                raise ResourceExhausted(f"{size} bytes; the limit is {settings.max_metadata_bytes_per_item}", f"items[{i}].metadata")
        if sum(sizes) > settings.max_metadata_bytes_per_request:
            raise ResourceExhausted(f"{sum(sizes)} bytes of metadata; the limit is {settings.max_metadata_bytes_per_request}", "items")
        images = await decode_image_list([item.image for item in items], [f"items[{i}].image" for i in range(len(items))], "items", settings)
        labels = [item.label if item.HasField("label") else None for item in items]
        metadata = [dict(item.metadata) for item in items]
        await search.add(ids, images, labels, metadata, context.time_remaining())
        return search_pb2.AddItemsResponse(added=len(items))

    async def DeleteItems(self, request, context):
        ids = list(request.ids)
        if not ids:
            raise InvalidArgument("must hold at least one id", "ids")
        validation.count(len(ids), self.settings.max_batch_images, "ids", "ids")
        validation.unique_ids(ids, self.settings.max_id_bytes, "ids[{}]")
        await self.search.delete(ids)
        return search_pb2.DeleteItemsResponse(deleted=len(ids))

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
        predictions = await self.search.propagate_labels(
            labels, neighbours, PROPAGATION_METHODS[request.method], settings.max_propagation_items, context.time_remaining()
        )

        def message(chunk: list[tuple[str, int, float]]) -> search_pb2.PropagateLabelsResponse:
            return search_pb2.PropagateLabelsResponse(predictions=[
                search_pb2.PredictedLabel(id=item_id, label=label, confidence=confidence) for item_id, label, confidence in chunk
            ])

        for start in range(0, len(predictions), settings.propagation_chunk_items):
            yield await asyncio.to_thread(message, predictions[start : start + settings.propagation_chunk_items])

    async def GetIndexStats(self, request, context):
        index = self.search.index
        binding = index.binding
        return search_pb2.IndexStats(
            items=len(index),
            model=common_pb2.ModelRef(name=binding.model, version=binding.version),
            code_dim=binding.code_dim,
            num_bits=binding.num_bits,
        )
