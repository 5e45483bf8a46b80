"""The search capability: the code index, fed by the encoder version it is bound to."""
import asyncio
import logging

import numpy as np

from serving.encoding import Encoding
from serving.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from serving.index import Binding, CodeIndex, Hit, NewItem
from serving.label_propagation import Method, knn_graph, propagate
from serving.runtime import encoder_entry
from latentserve.datasets import load_mnist

log = logging.getLogger(__name__)
GALLERY_MARK = "gallery:mnist-test"
GALLERY_BATCH = 1000


class Search:
    def __init__(self, index: CodeIndex, encoding: Encoding):
        self.index = index
        self.encoding = encoding

    @classmethod
    async def open(cls, directory, encoding: Encoding, model: str, gallery: str) -> "Search":
        """Open (or create, bound to the newest version of `model`) the index, seeding the gallery once."""
        binding = Binding(model, *encoding.signature(model, 0))
        index = await asyncio.to_thread(CodeIndex, directory, binding)
        search = cls(index, encoding)
        if gallery == "mnist-test" and not index.is_marked(GALLERY_MARK):
            await search._seed_mnist_test()
        return search

    async def _seed_mnist_test(self) -> None:
        """One transaction with the mark, so an interrupted start seeds again from scratch."""
        test = (await asyncio.to_thread(load_mnist)).test
        batches = [await self.encode(test.images[i : i + GALLERY_BATCH, None]) for i in range(0, len(test.labels), GALLERY_BATCH)]
        values = np.concatenate([codes.values for codes in batches])
        bits = np.concatenate([codes.bits for codes in batches])
        items = [NewItem(f"mnist-test-{i:05d}", values[i], bits[i], int(label)) for i, label in enumerate(test.labels)]
        await asyncio.to_thread(self.index.add, items, GALLERY_MARK)
        log.info("seeded the index with %d MNIST test images", len(items))

    async def encode(self, images: np.ndarray, timeout: float | None = None):
        binding = self.index.binding
        try:
            return await self.encoding.encode(binding.model, binding.version, images, timeout)
        except NotFound:
            raise FailedPrecondition(
                f"the index holds codes of {binding.model} version {binding.version}, which is not loaded"
            ) from None

    def ready(self) -> bool:
        """Whether the encoder version the index is bound to is loaded."""
        entry = encoder_entry(self.encoding.runtime, self.index.binding.model)
        return entry is not None and self.index.binding.version in entry.versions

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
        self, labels: dict[str, int], neighbours: int, method: Method, max_items: int
    ) -> list[tuple[str, int, float]]:
        """(id, label, confidence) of every stored item, from the labels of a few (see label_propagation)."""
        ids, codes = await asyncio.to_thread(self.index.codes)
        if len(ids) > max_items:
            raise ResourceExhausted(f"the index holds {len(ids)} items; propagation is limited to {max_items}")
        if len(ids) < 2:
            raise FailedPrecondition(f"the index holds {len(ids)} items; propagation needs at least 2")
        rows = {item_id: row for row, item_id in enumerate(ids)}
        missing = sorted(set(labels) - set(rows))
        if missing:
            raise NotFound(f"no items {', '.join(missing[:10])}", "labels")
        classes = sorted(set(labels.values()))  # the given classes, as columns of the score matrix
        labelled = np.asarray([rows[item_id] for item_id in labels])
        columns = np.searchsorted(classes, list(labels.values()))

        def run() -> np.ndarray:
            return propagate(knn_graph(codes, neighbours), labelled, columns, len(classes), method)

        scores = await asyncio.to_thread(run)
        best = scores.argmax(1)
        confidence = scores[np.arange(len(ids)), best]
        predicted = np.where(confidence > 0, np.asarray(classes)[best], -1)
        return list(zip(ids, predicted.tolist(), confidence.tolist()))
