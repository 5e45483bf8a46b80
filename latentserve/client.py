"""The Python client of latentserve.v1: numpy arrays and PIL images in, typed results and numpy arrays
out, the server's statuses as typed exceptions. `Client` calls synchronously; `AsyncClient` has the same
methods as coroutines, for asyncio. The `latentserve` command's client verbs are built on `Client`.

    from latentserve.client import Client

    with Client("127.0.0.1:50051", token=...) as client:
        codes = client.encode(images)            # (n, 28, 28) uint8 or float32, PIL images, or PNG/JPEG bytes
        hits = client.search(image=images[0], k=10)
        digits = client.generate(16, labels=[7] * 16, seed=3)

Images go as one raw tensor when they are a numpy array (the fast path), else as PNG/JPEG files; a PIL
image is sent as PNG. A refused call raises the `ServiceError` subclass of its status (InvalidArgument,
NotFound, ResourceExhausted, ...), with the request field it names and, for a quota, when to retry.
"""
import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import grpc
import numpy as np
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from PIL import Image as PILImage

from latentserve.v1 import (
    classifier_pb2,
    classifier_pb2_grpc,
    common_pb2,
    density_pb2,
    density_pb2_grpc,
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

DEFAULT_TARGET = "127.0.0.1:50051"
INDEX_KINDS = {"exact": search_pb2.INDEX_KIND_EXACT, "ivf": search_pb2.INDEX_KIND_IVF, "hnsw": search_pb2.INDEX_KIND_HNSW}
SPACES = {"code": search_pb2.SPACE_CODE, "hash": search_pb2.SPACE_HASH}


# --- errors ------------------------------------------------------------------------------------------

class ServiceError(Exception):
    """A call the gateway refused or failed: its status `code`, the request `field` it names (if any),
    and for a quota, `retry_after` seconds."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str | None = None, retry_after: float | None = None):
        super().__init__(f"{code.name}: {field}: {message}" if field else f"{code.name}: {message}")
        self.code, self.message, self.field, self.retry_after = code, message, field, retry_after


class InvalidArgument(ServiceError): ...
class NotFound(ServiceError): ...
class AlreadyExists(ServiceError): ...
class ResourceExhausted(ServiceError): ...
class FailedPrecondition(ServiceError): ...
class Unavailable(ServiceError): ...
class DeadlineExceeded(ServiceError): ...
class Unauthenticated(ServiceError): ...
class PermissionDenied(ServiceError): ...


ERRORS: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
}


FIELD_PREFIX = re.compile(r"([a-z_][a-z0-9_]*(?:\[\d+\])?(?:\.[a-z_][a-z0-9_]*(?:\[\d+\])?)*): ")  # "items[3].image: ..."


def service_error(error: grpc.RpcError) -> ServiceError:
    """The typed error of a failed call: the field it names (the server starts its message with it, and
    an INVALID_ARGUMENT carries it in a BadRequest detail too) and a quota's retry delay."""
    code, message, field_name, retry_after = error.code(), error.details() or "", None, None
    if prefix := FIELD_PREFIX.match(message):
        field_name, message = prefix.group(1), message[prefix.end():]
    status = rpc_status.from_call(error) if hasattr(error, "trailing_metadata") else None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            field_name = request.field_violations[0].field if request.field_violations else None
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry_after = info.retry_delay.ToTimedelta().total_seconds()
    return ERRORS.get(code, ServiceError)(code, message, field_name, retry_after)


# --- results -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int


@dataclass(frozen=True)
class Graph:
    model: str
    name: str
    capability: str
    versions: tuple[int, ...]  # loaded, newest first
    skipped: dict[str, str]  # directory in a version's place -> why it is not served


@dataclass(frozen=True)
class Codes:
    model: ModelVersion
    values: np.ndarray  # (n, code_dim) float32
    bits: np.ndarray  # (n, ceil(num_bits / 8)) uint8, numpy.packbits order
    num_bits: int


@dataclass(frozen=True)
class Distribution:
    """Whether each image is like the density model's training data (the Density service says how)."""
    model: ModelVersion  # the density model that scored them
    scores: np.ndarray  # (n,) float32, bits; higher: less like the training data
    out_of_distribution: np.ndarray  # (n,) bool: score above the threshold
    threshold: float


@dataclass(frozen=True)
class Densities:
    model: ModelVersion
    log_likelihoods: np.ndarray  # (n,) nats, of the images binarised at 0.5
    bits_per_dim: np.ndarray  # (n,)
    distribution: Distribution


@dataclass(frozen=True)
class Classes:
    model: ModelVersion
    probabilities: np.ndarray  # (n, classes) float32
    labels: np.ndarray  # (n,) the most probable class
    confidences: np.ndarray  # (n,) its probability
    entropies: np.ndarray  # (n,) in nats
    distribution: Distribution | None = None  # with check_distribution


@dataclass(frozen=True)
class Images:
    """Images a model made: (n, 28, 28) float32 in [0, 1], or PNG files when asked for."""
    model: ModelVersion
    images: np.ndarray | None
    png: list[bytes]
    labels: tuple[int, ...] = ()  # a conditional generator's
    latents: np.ndarray | None = None  # a generator's
    direction: str = ""  # a translator's
    distribution: Distribution | None = None  # a translation's inputs, with check_distribution
    start_index: int = 0  # a stream chunk's first sample


@dataclass(frozen=True)
class Hit:
    id: str
    distance: float
    label: int | None
    metadata: dict[str, str]


@dataclass(frozen=True)
class Item:
    """An item to store (`image` required), or a stored one (`code` and `bits` set; `image` when kept and asked for)."""
    id: str
    image: object = None  # what `encode` takes for one image, or the stored file's bytes
    label: int | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    code: np.ndarray | None = None
    bits: bytes = b""


@dataclass(frozen=True)
class Collection:
    name: str
    items: int
    model: ModelVersion
    code_dim: int
    num_bits: int
    keep_images: bool
    index: dict  # kind (exact, ivf or hnsw) and its parameters: nlist, nprobe, m, ef_search
    approximate: bool
    reindex: dict | None  # {"model", "done", "total", "error"} while one runs, or after one failed


# --- conversions -------------------------------------------------------------------------------------

def _png(picture: PILImage.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _file(image) -> bytes:
    if isinstance(image, PILImage.Image):
        return _png(image)
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    if isinstance(image, Path):
        return image.read_bytes()
    raise TypeError(f"an image is a numpy array, a PIL image, PNG/JPEG bytes or a Path, not {type(image).__name__}")


def _tensor(array: np.ndarray) -> common_pb2.Tensor:
    if array.dtype == np.uint8:
        return common_pb2.Tensor(shape=array.shape, dtype=common_pb2.DATA_TYPE_UINT8, data=array.tobytes())
    values = np.ascontiguousarray(array, "<f4")
    return common_pb2.Tensor(shape=values.shape, dtype=common_pb2.DATA_TYPE_FLOAT32, data=values.tobytes())


def images_message(images) -> common_pb2.Images:
    """A batch: a numpy array ((28, 28), (n, 28, 28) or (n, 1, 28, 28); uint8 0..255 or floats in [0, 1]),
    or a sequence of one-image arrays, goes as one tensor; a PIL image, bytes, a Path, or a sequence of
    them, as files."""
    if isinstance(images, np.ndarray):
        return common_pb2.Images(tensor=_tensor(images[None] if images.ndim == 2 else images))
    files = [images] if isinstance(images, (PILImage.Image, bytes, bytearray, Path)) else list(images)
    if files and all(isinstance(image, np.ndarray) for image in files):  # arrays of one image each
        return common_pb2.Images(tensor=_tensor(np.stack(files)))
    return common_pb2.Images(encoded=common_pb2.EncodedImages(images=[_file(image) for image in files]))


def image_message(image) -> common_pb2.Image:
    """One image: a (28, 28) or (1, 28, 28) array as a tensor; a PIL image, bytes or a Path as a file."""
    if isinstance(image, np.ndarray):
        return common_pb2.Image(tensor=_tensor(image))
    return common_pb2.Image(encoded=_file(image))


def _array(tensor: common_pb2.Tensor) -> np.ndarray:
    dtype = "<f4" if tensor.dtype == common_pb2.DATA_TYPE_FLOAT32 else np.uint8
    return np.frombuffer(tensor.data, dtype).reshape(tensor.shape)


def _version(ref: common_pb2.ModelRef) -> ModelVersion:
    return ModelVersion(ref.name, ref.version)


def _format(png: bool) -> int:
    return common_pb2.IMAGE_FORMAT_PNG if png else common_pb2.IMAGE_FORMAT_TENSOR


def _images(response, **extra) -> Images:
    return Images(_version(response.model), _array(response.images) if response.HasField("images") else None, list(response.png), **extra)


def _distribution(message: density_pb2.Distribution) -> Distribution:
    return Distribution(_version(message.model), np.asarray(message.scores, np.float32), np.asarray(message.out_of_distribution, bool), message.threshold)


def _checked(response) -> Distribution | None:
    return _distribution(response.distribution) if response.HasField("distribution") else None


def _graphs(models) -> list[Graph]:
    return [
        Graph(model.name, graph.name, graph.capability, tuple(v.version for v in graph.versions), {s.directory: s.reason for s in graph.skipped_versions})
        for model in models for graph in model.graphs
    ]


def _hit(hit: search_pb2.Hit) -> Hit:
    return Hit(hit.id, hit.distance, hit.label if hit.HasField("label") else None, dict(hit.metadata))


def _stored(item: search_pb2.Item) -> Item:
    image = item.image.encoded if item.image.WhichOneof("data") == "encoded" else (_array(item.image.tensor) if item.HasField("image") else None)
    return Item(item.id, image, item.label if item.HasField("label") else None, dict(item.metadata),
                np.asarray(item.code.values, np.float32), item.code.bits)


def _collection(stats: search_pb2.IndexStats) -> Collection:
    reindex = None
    if stats.HasField("reindex"):
        reindex = {"model": _version(stats.reindex.model), "done": stats.reindex.done, "total": stats.reindex.total, "error": stats.reindex.error}
    kind = search_pb2.IndexKind.Name(stats.index.kind).removeprefix("INDEX_KIND_").lower()
    index = {"kind": "exact" if kind == "unspecified" else kind, "nlist": stats.index.nlist, "nprobe": stats.index.nprobe,
             "m": stats.index.m, "ef_search": stats.index.ef_search}
    return Collection(stats.collection, stats.items, _version(stats.model), stats.code_dim, stats.num_bits, stats.keep_images,
                      index, stats.approximate, reindex)


def _query(image, id: str | None, code) -> dict:
    given = [name for name, value in (("image", image), ("id", id), ("code", code)) if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of image, id and code (got {given or 'none'})")
    if image is not None:
        return {"image": image_message(image)}
    if id is not None:
        return {"id": id}
    if isinstance(code, (bytes, bytearray)):
        return {"code": common_pb2.Code(bits=bytes(code))}
    return {"code": common_pb2.Code(values=np.asarray(code, np.float32).tolist())}


def _item(item: Item) -> search_pb2.Item:
    return search_pb2.Item(id=item.id, image=image_message(item.image), label=item.label, metadata=item.metadata)


def _sampling(seed: int, start_index: int, labels: Sequence[int] | None, truncation: float | None) -> generator_pb2.Sampling:
    sampling = generator_pb2.Sampling(seed=seed, start_index=start_index, labels=list(labels or ()))
    if truncation is not None:
        sampling.truncation = truncation
    return sampling


# --- the calls ---------------------------------------------------------------------------------------

class _Calls:
    """Each call as a request and a parse of its response; `_call` (sync or async) runs it."""

    def _call(self, service: str, method: str, request, parse):
        raise NotImplementedError

    def models(self) -> list[Graph]:
        """Every served graph, with its loaded versions (newest first)."""
        return self._call("Models", "ListModels", models_pb2.ListModelsRequest(), lambda r: _graphs(r.models))

    def model(self, name: str) -> list[Graph]:
        return self._call("Models", "GetModel", models_pb2.GetModelRequest(name=name), lambda r: _graphs([r]))

    def encode(self, images, model: str = "", version: int = 0) -> Codes:
        request = encoder_pb2.EncodeRequest(model=common_pb2.ModelRef(name=model, version=version), images=images_message(images))
        return self._call("Encoder", "Encode", request, lambda r: Codes(_version(r.model), _array(r.codes), _array(r.bits), r.num_bits))

    def classify(self, images, model: str = "", version: int = 0, check_distribution: bool = False) -> Classes:
        """With `check_distribution`, also whether each image is like the training data (`score`)."""
        request = classifier_pb2.ClassifyRequest(
            model=common_pb2.ModelRef(name=model, version=version), images=images_message(images), check_distribution=check_distribution)
        return self._call("Classifier", "Classify", request, lambda r: Classes(
            _version(r.model), _array(r.probabilities), np.asarray(r.labels), np.asarray(r.confidences), np.asarray(r.entropies),
            _checked(r)))

    def translate(self, images, direction: str, model: str = "", version: int = 0, png: bool = False,
                  check_distribution: bool = False) -> Images:
        request = translator_pb2.TranslateRequest(
            direction=direction, model=common_pb2.ModelRef(name=model, version=version), images=images_message(images), format=_format(png),
            check_distribution=check_distribution)
        return self._call("Translator", "Translate", request, lambda r: _images(r, direction=r.direction, distribution=_checked(r)))

    def score(self, images, model: str = "", version: int = 0) -> Densities:
        """Each image's log-likelihood under a density model, and whether it is like the training data."""
        request = density_pb2.ScoreRequest(model=common_pb2.ModelRef(name=model, version=version), images=images_message(images))
        return self._call("Density", "Score", request, lambda r: Densities(
            _version(r.model), np.asarray(r.log_likelihoods, np.float32), np.asarray(r.bits_per_dim, np.float32), _distribution(r.distribution)))

    def generate(self, count: int, model: str = "", version: int = 0, seed: int = 0, labels: Sequence[int] | None = None,
                 truncation: float | None = None, start_index: int = 0, png: bool = False) -> Images:
        """`count` images of samples start_index.. of `seed` (the same images however a job is split)."""
        request = generator_pb2.GenerateRequest(model=common_pb2.ModelRef(name=model, version=version), count=count,
                                                sampling=_sampling(seed, start_index, labels, truncation), format=_format(png))
        return self._call("Generator", "Generate", request, lambda r: _images(r, labels=tuple(r.labels), latents=_array(r.latents)))

    def generate_from(self, latents: np.ndarray, model: str = "", version: int = 0, labels: Sequence[int] | None = None,
                      png: bool = False) -> Images:
        """Images drawn from given latents (n, latent_dim), e.g. codes from `encode`, each with its class in
        `labels` for a conditional model (M2's analogies: one image's style drawn with every class)."""
        request = generator_pb2.GenerateRequest(model=common_pb2.ModelRef(name=model, version=version), latents=_tensor(latents),
                                                sampling=generator_pb2.Sampling(labels=list(labels or ())), format=_format(png))
        return self._call("Generator", "Generate", request, lambda r: _images(r, labels=tuple(r.labels), latents=_array(r.latents)))

    def interpolate(self, start_seed: int, end_seed: int, steps: int, model: str = "", version: int = 0, spherical: bool = False,
                    label: int | None = None, truncation: float | None = None, png: bool = False) -> Images:
        request = generator_pb2.InterpolateRequest(
            model=common_pb2.ModelRef(name=model, version=version), seeds=generator_pb2.SeedPair(start=start_seed, end=end_seed),
            steps=steps, method=generator_pb2.INTERPOLATION_SPHERICAL if spherical else generator_pb2.INTERPOLATION_LINEAR,
            truncation=truncation, label=label, format=_format(png))
        return self._call("Generator", "Interpolate", request, _images)

    def search(self, image=None, *, id: str | None = None, code=None, k: int = 10, space: str = "code", collection: str = "",
               filter: str = "") -> list[Hit]:
        """The `k` nearest items to one query: an image, a stored item's id, or a code (float values, or
        packed bits for space "hash")."""
        request = search_pb2.SearchRequest(k=k, space=SPACES[space], collection=collection, filter=filter, **_query(image, id, code))
        return self._call("Search", "Search", request, lambda r: [_hit(hit) for hit in r.hits])

    def search_batch(self, images, k: int = 10, space: str = "code", collection: str = "", filter: str = "") -> list[list[Hit]]:
        """Nearest items to each of `images` (one query each), in one call."""
        queries = [search_pb2.Query(image=image_message(image)) for image in images]
        request = search_pb2.SearchBatchRequest(queries=queries, k=k, space=SPACES[space], collection=collection, filter=filter)
        return self._call("Search", "SearchBatch", request, lambda r: [[_hit(hit) for hit in result.hits] for result in r.results])

    def add_items(self, items: Sequence[Item], collection: str = "") -> int:
        """Store new items (an id already stored: AlreadyExists); how many were added."""
        request = search_pb2.AddItemsRequest(items=[_item(item) for item in items], collection=collection)
        return self._call("Search", "AddItems", request, lambda r: r.added)

    def upsert_items(self, items: Sequence[Item], collection: str = "") -> tuple[int, int]:
        """Store items, replacing stored ones of the same ids: (added, replaced)."""
        request = search_pb2.UpsertItemsRequest(items=[_item(item) for item in items], collection=collection)
        return self._call("Search", "UpsertItems", request, lambda r: (r.added, r.replaced))

    def list_items(self, collection: str = "", filter: str = "", page_size: int = 0, page_token: str = "") -> tuple[list[Item], str]:
        """One page of stored items in the order they were added (codes included), and the next page's
        token ("" after the last page)."""
        request = search_pb2.ListItemsRequest(collection=collection, filter=filter, page_size=page_size, page_token=page_token)
        return self._call("Search", "ListItems", request, lambda r: ([_stored(item) for item in r.items], r.next_page_token))

    def get_items(self, ids: Sequence[str], collection: str = "", with_images: bool = False) -> list[Item]:
        """The stored items among `ids`, in their order (the others are left out)."""
        request = search_pb2.GetItemsRequest(ids=list(ids), collection=collection, with_images=with_images)
        return self._call("Search", "GetItems", request, lambda r: [_stored(item) for item in r.items])

    def delete_items(self, ids: Sequence[str] = (), collection: str = "", filter: str = "") -> int:
        """Delete `ids` (all or none) or what `filter` selects; how many."""
        request = search_pb2.DeleteItemsRequest(ids=list(ids), collection=collection, filter=filter)
        return self._call("Search", "DeleteItems", request, lambda r: r.deleted)

    def collection(self, name: str = "") -> Collection:
        """A collection's stats ("": the default collection)."""
        return self._call("Search", "GetIndexStats", search_pb2.GetIndexStatsRequest(collection=name), _collection)

    def collections(self) -> list[Collection]:
        return self._call("Search", "ListCollections", search_pb2.ListCollectionsRequest(), lambda r: [_collection(c) for c in r.collections])

    def create_collection(self, name: str, model: str = "", version: int = 0, keep_images: bool = False, index: str = "exact",
                          nlist: int = 0, nprobe: int = 0, m: int = 0, ef_search: int = 0) -> Collection:
        spec = search_pb2.IndexSpec(kind=INDEX_KINDS[index], nlist=nlist, nprobe=nprobe, m=m, ef_search=ef_search)
        request = search_pb2.CreateCollectionRequest(name=name, model=common_pb2.ModelRef(name=model, version=version), keep_images=keep_images, index=spec)
        return self._call("Search", "CreateCollection", request, _collection)

    def drop_collection(self, name: str) -> None:
        return self._call("Search", "DropCollection", search_pb2.DropCollectionRequest(name=name), lambda r: None)

    def reindex(self, collection: str = "", model: str = "", version: int = 0) -> Collection:
        """Start rebuilding a collection with an encoder version; it switches when done (`collection` shows progress)."""
        request = search_pb2.ReindexCollectionRequest(collection=collection, model=common_pb2.ModelRef(name=model, version=version))
        return self._call("Search", "ReindexCollection", request, _collection)


def _stream_request(count: int, model: str, version: int, seed: int, start_index: int, label: int | None, truncation: float | None,
                    chunk_size: int, png: bool) -> generator_pb2.GenerateStreamRequest:
    return generator_pb2.GenerateStreamRequest(
        model=common_pb2.ModelRef(name=model, version=version), count=count,
        sampling=_sampling(seed, start_index, None if label is None else [label], truncation), chunk_size=chunk_size, format=_format(png))


def _chunk(chunk: generator_pb2.GenerateChunk) -> Images:
    return _images(chunk, labels=tuple(chunk.labels), start_index=chunk.start_index)


STUBS = {
    "Models": models_pb2_grpc.ModelsStub, "Encoder": encoder_pb2_grpc.EncoderStub, "Classifier": classifier_pb2_grpc.ClassifierStub,
    "Translator": translator_pb2_grpc.TranslatorStub, "Generator": generator_pb2_grpc.GeneratorStub, "Search": search_pb2_grpc.SearchStub,
    "Density": density_pb2_grpc.DensityStub,
}


def _credentials(tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None) -> grpc.ChannelCredentials | None:
    """TLS with `tls_ca` (None: the system's roots) when any is given; mutual TLS with `tls_cert` and `tls_key`."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("give tls_cert and tls_key together (mutual TLS)")
    if tls_ca is None and tls_cert is None:
        return None
    read = lambda path: None if path is None else Path(path).read_bytes()  # noqa: E731
    return grpc.ssl_channel_credentials(read(tls_ca), read(tls_key), read(tls_cert))


class Client(_Calls):
    """Synchronous calls to a gateway at `target`: over TLS with `tls_ca` (mutual with `tls_cert` and
    `tls_key`), with a bearer `token`, each call within `timeout` seconds (None: no deadline)."""

    def __init__(self, target: str = DEFAULT_TARGET, *, token: str | None = None, tls_ca: Path | None = None,
                 tls_cert: Path | None = None, tls_key: Path | None = None, timeout: float | None = None):
        credentials = _credentials(tls_ca, tls_cert, tls_key)
        self.target = target
        self.channel = grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
        self._stubs = {name: stub(self.channel) for name, stub in STUBS.items()}
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    def wait_ready(self, timeout: float) -> None:
        """Wait until the gateway answers; Unavailable if it does not within `timeout` seconds."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise Unavailable(grpc.StatusCode.UNAVAILABLE, f"no gateway at {self.target} (none answered within {timeout:g} s)") from None

    def _call(self, service: str, method: str, request, parse):
        try:
            response = getattr(self._stubs[service], method)(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise service_error(error) from None
        return parse(response)

    def generate_stream(self, count: int, model: str = "", version: int = 0, seed: int = 0, start_index: int = 0,
                        label: int | None = None, truncation: float | None = None, chunk_size: int = 0, png: bool = False) -> Iterator[Images]:
        """A job of `count` images as chunks (their `start_index` set), for jobs too large for one message."""
        request = _stream_request(count, model, version, seed, start_index, label, truncation, chunk_size, png)
        try:
            for chunk in self._stubs["Generator"].GenerateStream(request, timeout=self.timeout, metadata=self._metadata):
                yield _chunk(chunk)
        except grpc.RpcError as error:
            raise service_error(error) from None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient(_Calls):
    """The same calls as `Client`, as coroutines on a grpc.aio channel (made in the running event loop)."""

    def __init__(self, target: str = DEFAULT_TARGET, *, token: str | None = None, tls_ca: Path | None = None,
                 tls_cert: Path | None = None, tls_key: Path | None = None, timeout: float | None = None):
        credentials = _credentials(tls_ca, tls_cert, tls_key)
        self.target = target
        self.channel = grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
        self._stubs = {name: stub(self.channel) for name, stub in STUBS.items()}
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout

    async def _run(self, service: str, method: str, request, parse):
        try:
            response = await getattr(self._stubs[service], method)(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise service_error(error) from None
        return parse(response)

    def _call(self, service: str, method: str, request, parse):
        return self._run(service, method, request, parse)

    async def generate_stream(self, count: int, model: str = "", version: int = 0, seed: int = 0, start_index: int = 0,
                              label: int | None = None, truncation: float | None = None, chunk_size: int = 0, png: bool = False):
        """As `Client.generate_stream`, an async iterator."""
        request = _stream_request(count, model, version, seed, start_index, label, truncation, chunk_size, png)
        try:
            async for chunk in self._stubs["Generator"].GenerateStream(request, timeout=self.timeout, metadata=self._metadata):
                yield _chunk(chunk)
        except grpc.RpcError as error:
            raise service_error(error) from None

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
