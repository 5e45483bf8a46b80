"""gRPC servicers: validate and convert requests, call a capability, build the response."""
import asyncio
import json

import numpy as np

from latentserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    encoder_pb2,
    encoder_pb2_grpc,
    generator_pb2,
    generator_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    search_pb2,
    search_pb2_grpc,
    translator_pb2,
    translator_pb2_grpc,
)
from serving.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from latentserve.latents import sample_latents
from serving.generation import Generated, check_truncation, interpolate
from serving.images import TENSOR_DTYPES, decode_batch, decode_image, encode_png
from serving.settings import Settings

API_DTYPES = {dtype.name: code for code, dtype in TENSOR_DTYPES.items()}  # numpy name -> DataType


class Gateway:
    """What the servicers share; the runtime and capabilities are None until loading finishes."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.runtime = None
        self.encoding = None
        self.classification = None
        self.generation = None
        self.translation = None
        self.search = None

    def require_runtime(self):
        if self.runtime is None:
            raise Unavailable("models are still loading")
        return self.runtime

    def require_encoding(self):
        if self.encoding is None:
            raise Unavailable("models are still loading")
        return self.encoding

    def require_classification(self):
        if self.classification is None:
            raise Unavailable("models are still loading")
        return self.classification

    def require_generation(self):
        if self.generation is None:
            raise Unavailable("models are still loading")
        return self.generation

    def require_translation(self):
        if self.translation is None:
            raise Unavailable("models are still loading")
        return self.translation

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
                target.extend(models_pb2.TensorInfo(name=t.name, dtype=API_DTYPES.get(t.dtype, 0), dims=t.dims) for t in tensors)
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


class ClassifierServicer(classifier_pb2_grpc.ClassifierServicer):
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    async def Classify(self, request, context):
        settings = self.gateway.settings
        images = decode_batch(request.images, "images", settings.max_batch_images, settings.max_image_pixels)
        classified = await self.gateway.require_classification().classify(
            request.model.name or settings.default_classifier, request.model.version, images, context.time_remaining()
        )
        return classifier_pb2.ClassifyResponse(
            model=common_pb2.ModelRef(name=classified.model, version=classified.version),
            probabilities=_tensor(classified.probabilities, common_pb2.DATA_TYPE_FLOAT32),
            labels=classified.labels.tolist(),
            confidences=classified.confidences.tolist(),
            entropies=classified.entropies.tolist(),
        )


def _tensor(array: np.ndarray, dtype: int) -> common_pb2.Tensor:
    return common_pb2.Tensor(shape=array.shape, dtype=dtype, data=np.ascontiguousarray(array).tobytes())


def _float_tensor(tensor: common_pb2.Tensor, field: str) -> np.ndarray:
    """A float32 Tensor message -> array of its shape."""
    if tensor.dtype != common_pb2.DATA_TYPE_FLOAT32:
        raise InvalidArgument("want DATA_TYPE_FLOAT32", f"{field}.dtype")
    shape = tuple(tensor.shape)
    if any(n < 0 for n in shape) or len(tensor.data) != 4 * int(np.prod(shape)):
        raise InvalidArgument(f"{len(tensor.data)} bytes do not fill shape {list(shape)} of float32", f"{field}.data")
    return np.frombuffer(tensor.data, "<f4").reshape(shape)


def _png(image_format: int) -> bool:
    """Whether images go out as PNG files (else as one float32 tensor)."""
    if image_format not in (common_pb2.IMAGE_FORMAT_UNSPECIFIED, common_pb2.IMAGE_FORMAT_TENSOR, common_pb2.IMAGE_FORMAT_PNG):
        raise InvalidArgument(f"unknown format {image_format}", "format")
    return image_format == common_pb2.IMAGE_FORMAT_PNG


def _image_fields(images: np.ndarray, png: bool) -> dict:
    return {"png": encode_png(images)} if png else {"images": _tensor(images[:, 0], common_pb2.DATA_TYPE_FLOAT32)}


class GeneratorServicer(generator_pb2_grpc.GeneratorServicer):
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    def _resolve(self, model: common_pb2.ModelRef):
        return self.gateway.require_generation().generator(model.name or self.gateway.settings.default_generator, model.version)

    def _count(self, count: int, limit: int, field: str = "count") -> int:
        if count <= 0:
            raise InvalidArgument("must be at least 1", field)
        if count > limit:
            raise ResourceExhausted(f"{count} images; the limit is {limit}", field)
        return count

    def _response(self, generated: Generated, png: bool) -> generator_pb2.GenerateResponse:
        return generator_pb2.GenerateResponse(
            model=common_pb2.ModelRef(name=generated.generator.entry.model, version=generated.generator.version),
            latents=_tensor(generated.latents, common_pb2.DATA_TYPE_FLOAT32),
            labels=[] if generated.labels is None else generated.labels.tolist(),
            **_image_fields(generated.images, png),
        )

    async def Generate(self, request, context):
        generation, settings = self.gateway.require_generation(), self.gateway.settings
        generator, png = self._resolve(request.model), _png(request.format)
        sampling = request.sampling
        truncation = check_truncation(sampling.truncation if sampling.HasField("truncation") else None, "sampling.truncation")
        if request.HasField("latents"):
            if request.count:
                raise InvalidArgument("leave 0 when `latents` is set", "count")
            latents = generation.latents(generator, _float_tensor(request.latents, "latents"), "latents")
            self._count(len(latents), settings.max_batch_images, "latents")
        else:
            count = self._count(request.count, settings.max_batch_images)
            if sampling.start_index < 0:
                raise InvalidArgument("must be 0 or more", "sampling.start_index")
            latents = await asyncio.to_thread(sample_latents, sampling.seed, sampling.start_index, count, generator.latent_dim, truncation)
        labels = generation.labels(generator, list(sampling.labels), sampling.start_index, len(latents), "sampling.labels")
        generated = await generation.run(generator, latents, labels, context.time_remaining())
        return await asyncio.to_thread(self._response, generated, png)  # PNG encoding off the event loop

    async def Interpolate(self, request, context):
        generation = self.gateway.require_generation()
        generator, png = self._resolve(request.model), _png(request.format)
        if request.steps < 2:
            raise InvalidArgument("must be at least 2 (the endpoints)", "steps")
        steps = self._count(request.steps, self.gateway.settings.max_batch_images, "steps")
        truncation = check_truncation(request.truncation if request.HasField("truncation") else None, "truncation")
        kind = request.WhichOneof("endpoints")
        if kind == "seeds":
            ends = [sample_latents(seed, 0, 1, generator.latent_dim, truncation)[0] for seed in (request.seeds.start, request.seeds.end)]
        elif kind == "latents":
            ends = generation.latents(generator, _float_tensor(request.latents, "latents"), "latents")
            if len(ends) != 2:
                raise InvalidArgument(f"{len(ends)} latents; want 2 (start and end)", "latents.shape")
        else:
            raise InvalidArgument("set `seeds` or `latents`", "endpoints")
        spherical = request.method == generator_pb2.INTERPOLATION_SPHERICAL
        latents = interpolate(ends[0], ends[1], steps, spherical)
        label = [request.label] if request.HasField("label") else [0] if generator.classes else []
        labels = generation.labels(generator, label, 0, steps, "label")
        generated = await generation.run(generator, latents, labels, context.time_remaining())
        return await asyncio.to_thread(self._response, generated, png)

    async def GenerateStream(self, request, context):
        generation, settings = self.gateway.require_generation(), self.gateway.settings
        generator, png = self._resolve(request.model), _png(request.format)
        count = self._count(request.count, settings.max_stream_images)
        sampling = request.sampling
        if sampling.start_index < 0:
            raise InvalidArgument("must be 0 or more", "sampling.start_index")
        if len(sampling.labels) > 1:
            raise InvalidArgument("give at most one label for a stream", "sampling.labels")
        truncation = check_truncation(sampling.truncation if sampling.HasField("truncation") else None, "sampling.truncation")
        if request.chunk_size < 0:
            raise InvalidArgument("must be positive (0: the default)", "chunk_size")
        chunk = min(self._count(request.chunk_size or settings.default_chunk_images, settings.max_batch_images, "chunk_size"), count)
        first, stop = sampling.start_index, sampling.start_index + count
        generation.labels(generator, list(sampling.labels), first, 0, "sampling.labels")  # check them before any work

        def message(start: int, generated: Generated) -> generator_pb2.GenerateChunk:
            return generator_pb2.GenerateChunk(
                model=common_pb2.ModelRef(name=generator.entry.model, version=generator.version),
                start_index=start,
                labels=[] if generated.labels is None else generated.labels.tolist(),
                **_image_fields(generated.images, png),
            )

        async def produce(start: int) -> generator_pb2.GenerateChunk:
            size = min(chunk, stop - start)
            latents = await asyncio.to_thread(sample_latents, sampling.seed, start, size, generator.latent_dim, truncation)
            labels = generation.labels(generator, list(sampling.labels), start, size, "sampling.labels")
            generated = await generation.run(generator, latents, labels, context.time_remaining())
            return await asyncio.to_thread(message, start, generated)

        # The next chunk is computed while the current one is sent; a cancelled call cancels it.
        pending = asyncio.ensure_future(produce(first))
        try:
            for start in range(first, stop, chunk):
                ready = await pending
                if start + chunk < stop:
                    pending = asyncio.ensure_future(produce(start + chunk))
                yield ready
        finally:
            pending.cancel()


class TranslatorServicer(translator_pb2_grpc.TranslatorServicer):
    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    async def Translate(self, request, context):
        translation, settings = self.gateway.require_translation(), self.gateway.settings
        png = _png(request.format)
        if request.resize not in (translator_pb2.RESIZE_UNSPECIFIED, translator_pb2.RESIZE_AREA, translator_pb2.RESIZE_NONE):
            raise InvalidArgument(f"unknown resize mode {request.resize}", "resize")
        images = decode_batch(
            request.images, "images", settings.max_batch_images, settings.max_image_pixels,
            resize=request.resize != translator_pb2.RESIZE_NONE,
        )
        translated = await translation.translate(
            request.direction, request.model.name, request.model.version, images, context.time_remaining()
        )

        def response() -> translator_pb2.TranslateResponse:
            return translator_pb2.TranslateResponse(
                model=common_pb2.ModelRef(name=translated.model, version=translated.version),
                direction=translated.direction,
                **_image_fields(translated.images, png),
            )

        return await asyncio.to_thread(response)  # PNG encoding off the event loop

    async def ListDirections(self, request, context):
        directions = []
        for name, entries in sorted(self.gateway.require_translation().directions().items()):
            for entry in sorted(entries, key=lambda e: e.model):
                (image_input,), (image_output,) = entry.inputs, entry.outputs
                directions.append(translator_pb2.Direction(
                    name=name, model=entry.model, versions=entry.versions, input_dims=image_input.dims, output_dims=image_output.dims
                ))
        return translator_pb2.ListDirectionsResponse(directions=directions)


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

    async def PropagateLabels(self, request, context):
        search, settings = self.gateway.require_search(), self.gateway.settings
        labels = dict(request.labels)
        if not labels:
            raise InvalidArgument("give at least one labelled item", "labels")
        for item_id, label in labels.items():
            if label < 0:
                raise InvalidArgument(f"label {label} of {item_id!r}; want 0 or more", "labels")
        if request.neighbours < 0:
            raise InvalidArgument("must be positive (0: the default)", "neighbours")
        if request.neighbours > settings.max_graph_neighbours:
            raise ResourceExhausted(f"{request.neighbours} neighbours; the limit is {settings.max_graph_neighbours}", "neighbours")
        methods = {
            search_pb2.PROPAGATION_UNSPECIFIED: "spreading",
            search_pb2.PROPAGATION_SPREADING: "spreading",
            search_pb2.PROPAGATION_HARMONIC: "harmonic",
        }
        if request.method not in methods:
            raise InvalidArgument(f"unknown method {request.method}", "method")
        predictions = await search.propagate_labels(
            labels, request.neighbours or settings.default_graph_neighbours, methods[request.method], settings.max_propagation_items
        )

        def message(chunk: list[tuple[str, int, float]]) -> search_pb2.PropagateLabelsResponse:
            return search_pb2.PropagateLabelsResponse(predictions=[
                search_pb2.PredictedLabel(id=item_id, label=label, confidence=confidence) for item_id, label, confidence in chunk
            ])

        for start in range(0, len(predictions), settings.propagation_chunk_items):
            yield await asyncio.to_thread(message, predictions[start : start + settings.propagation_chunk_items])

    async def GetIndexStats(self, request, context):
        search = self.gateway.require_search()
        binding = search.index.binding
        return search_pb2.IndexStats(
            items=len(search.index),
            model=common_pb2.ModelRef(name=binding.model, version=binding.version),
            code_dim=binding.code_dim,
            num_bits=binding.num_bits,
        )
