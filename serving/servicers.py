"""gRPC servicers: validate and convert requests, call a capability, build the response."""
import json

import numpy as np

from latentserve.v1 import (
    common_pb2,
    encoder_pb2,
    encoder_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
)
from serving.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from serving.images import TENSOR_DTYPES, decode_batch, decode_image
from serving.settings import Settings

API_DTYPES = {dtype.name: code for code, dtype in TENSOR_DTYPES.items()}  # numpy name -> DataType


class Gateway:
    """What the servicers share; `runtime`, `encoding` and `search` are None until loading finishes."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.runtime = None
        self.encoding = None
        self.search = None

    def require_runtime(self):
        if self.runtime is None:
            raise Unavailable("models are still loading")
        return self.runtime

    def require_encoding(self):
        if self.encoding is None:
            raise Unavailable("models are still loading")
        return self.encoding

    def require_search(self):
        if self.search is None:
            raise Unavailable("the search index is still loading")
        return self.search


class ModelsServicer(models_pb2_grpc.ModelsServicer):
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def _models(self) -> dict[str, models_pb2.ModelInfo]:
        models: dict[str, models_pb2.ModelInfo] = {}
        for entry in self.gateway.require_runtime().entries().values():
            info = models.setdefault(entry.model, models_pb2.ModelInfo(name=entry.model))
            graph = info.graphs.add(name=entry.graph, capability=entry.capability, repository_name=entry.name)
            for tensors, target in ((entry.inputs, graph.inputs), (entry.outputs, graph.outputs)):
                target.extend(models_pb2.TensorInfo(name=t.name, dtype=API_DTYPES.get(t.dtype.name, 0), dims=t.dims) for t in tensors)
            for version in entry.versions:
                card = entry.cards[version]
                metrics = {k: float(v) for k, v in card.get("metrics", {}).items() if isinstance(v, (int, float))}
                graph.versions.add(version=version, metrics=metrics, card_json=json.dumps(card))
        return models

    async def ListModels(self, request, context):
        return models_pb2.ListModelsResponse(models=sorted(self._models().values(), key=lambda m: m.name))

    async def GetModel(self, request, context):
        models = self._models()
        if request.name not in models:
            raise NotFound(f"no model named {request.name!r}", "name")
        return models[request.name]


class EncoderServicer(encoder_pb2_grpc.EncoderServicer):
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    async def Encode(self, request, context):
        settings = self.gateway.settings
        images = decode_batch(request.images, "images", settings.max_batch_images, settings.max_image_pixels)
        codes = await self.gateway.require_encoding().encode(
            request.model.name or settings.index_model, request.model.version, images, context.time_remaining()
        )
        return encoder_pb2.EncodeResponse(
            model=common_pb2.ModelRef(name=codes.model, version=codes.version),
            codes=_tensor(codes.values, common_pb2.DATA_TYPE_FLOAT32),
            bits=_tensor(codes.bits, common_pb2.DATA_TYPE_UINT8),
            num_bits=codes.num_bits,
        )


def _tensor(array: np.ndarray, dtype: int) -> common_pb2.Tensor:
    return common_pb2.Tensor(shape=array.shape, dtype=dtype, data=np.ascontiguousarray(array).tobytes())


class SearchServicer(search_pb2_grpc.SearchServicer):
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def _k(self, k: int) -> int:
        settings = self.gateway.settings
        if k < 0:
            raise InvalidArgument("must be positive (0: the default)", "k")
        if k > settings.max_k:
            raise ResourceExhausted(f"{k} hits asked; the limit is {settings.max_k}", "k")
        return k or settings.default_k

    async def Search(self, request, context):
        search, settings = self.gateway.require_search(), self.gateway.settings
        k = self._k(request.k)
        hashed = request.space == search_pb2.SPACE_HASH
        kind = request.WhichOneof("query")
        if kind == "image":
            image = decode_image(request.image, "image", settings.max_image_pixels)
            hits = await search.by_image(image, k, hashed, context.time_remaining())
        elif kind == "code":
            code = request.code
            hits = await search.by_code(np.asarray(code.values, np.float32), code.bits, code.num_bits, k, hashed)
        elif kind == "id":
            hits = await search.by_id(request.id, k, hashed)
        else:
            raise InvalidArgument("set one of `image`, `code` or `id`", "query")
        return search_pb2.SearchResponse(hits=[
            search_pb2.Hit(id=hit.id, distance=hit.distance, label=hit.label, metadata=hit.metadata) for hit in hits
        ])

    async def AddItems(self, request, context):
        search, settings = self.gateway.require_search(), self.gateway.settings
        items = request.items
        if not items:
            raise InvalidArgument("must hold at least one item", "items")
        if len(items) > settings.max_batch_images:
            raise ResourceExhausted(f"{len(items)} items; the limit is {settings.max_batch_images}", "items")
        first_seen: dict[str, int] = {}
        for i, item in enumerate(items):
            if not item.id or len(item.id.encode()) > settings.max_id_bytes:
                raise InvalidArgument(f"must be 1 to {settings.max_id_bytes} bytes", f"items[{i}].id")
            if item.id in first_seen:
                raise InvalidArgument(f"duplicates items[{first_seen[item.id]}].id {item.id!r}", f"items[{i}].id")
            first_seen[item.id] = i
        images = np.stack([
            decode_image(item.image, f"items[{i}].image", settings.max_image_pixels) for i, item in enumerate(items)
        ])
        labels = [item.label if item.HasField("label") else None for item in items]
        metadata = [dict(item.metadata) for item in items]
        await search.add([item.id for item in items], images, labels, metadata, context.time_remaining())
        return search_pb2.AddItemsResponse(added=len(items))

    async def DeleteItems(self, request, context):
        search, settings = self.gateway.require_search(), self.gateway.settings
        ids = list(request.ids)
        if not ids:
            raise InvalidArgument("must hold at least one id", "ids")
        if len(ids) > settings.max_batch_images:
            raise ResourceExhausted(f"{len(ids)} ids; the limit is {settings.max_batch_images}", "ids")
        if len(set(ids)) != len(ids):
            raise InvalidArgument("holds an id twice", "ids")
        await search.delete(ids)
        return search_pb2.DeleteItemsResponse(deleted=len(ids))

    async def GetIndexStats(self, request, context):
        search = self.gateway.require_search()
        binding = search.index.binding
        return search_pb2.IndexStats(
            items=len(search.index),
            model=common_pb2.ModelRef(name=binding.model, version=binding.version),
            code_dim=binding.code_dim,
            num_bits=binding.num_bits,
        )
