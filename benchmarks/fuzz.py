"""`latentserve bench fuzz`: random requests to every call of latentserve.v1 through a gateway process,
their statuses counted, and whether the gateway still answers at the end.

Requests are well-typed but hostile messages (any field set or not; shapes of up to 40 dims with huge or
negative sizes; unknown enum numbers; ids of random unicode up to 1,000 bytes; counts and indices at the
integer limits; NaN and infinity) or raw bytes that may not parse at all. Most messages are a valid
request with one to three fields, at any depth, given such values, so that they reach the deeper checks.
The builders here are the one source of them, all driven by a `random.Random`: tests/serving/test_fuzz.py
has hypothesis draw its seeds, this benchmark numbers them. A client sends nothing that may answer
INTERNAL or UNKNOWN or show a heap address.
"""
import copy
import io
import math
import random
import re
import struct
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from benchmarks.gateway import gateway_process
from latentserve.v1 import classifier_pb2, common_pb2, density_pb2, encoder_pb2, generator_pb2, models_pb2, search_pb2, translator_pb2

METHODS = {  # "/latentserve.v1.Search/AddItems" -> its descriptor, for every call of the API
    f"/{service.full_name}/{method.name}": method
    for module in (models_pb2, encoder_pb2, search_pb2, generator_pb2, classifier_pb2, translator_pb2, density_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
}
ANSWERS = {  # what a client's request may get; INTERNAL and UNKNOWN are bugs
    grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED,
}
HEAP_ADDRESS = re.compile(r"0x[0-9a-f]{6,}")
STORED_IDS = [f"fuzz-{i}" for i in range(4)]  # items `add_stored_items` puts in the index, so ids can hit
MODELS = ["autoencoder", "vae", "acgan", "dcgan", "wgan_gp", "wgan", "conv_vae", "ssgan", "lenet", "m2", "cyclegan", "pix2pix", "pixelcnn",
          "deep_autoencoder"]
DIRECTIONS = ["edges2digit", "mnist2uci", "uci2mnist"]
FILTERS = ["label == 1", 'label in [0, 1] and metadata["a"] == "b"', 'not (metadata["a"] in ["b", "c"]) or label != 2', "label ==", "(((", 'metadata["a" == 1']
STRINGS = {  # by field; deletes spare STORED_IDS
    "id": STORED_IDS, "ids": ["new"], "labels": STORED_IDS, "name": MODELS, "direction": DIRECTIONS,
    "collection": ["", "default", "fuzzed"], "filter": FILTERS, "page_token": ["", "cm93OjI=", "cm93Oi0x", "cm93OjE4NDQ2NzQ0MDczNzA5NTUxNjE2"],
}
LIMITS = [2, 9, 10, 28, 255, 256, 257, 1000, 1001, 10**7, 10**7 + 1, -1]  # around the API's own limits
INTEGER_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1), FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1), FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
}
FLOATS = [0.0, -0.0, 0.05, 0.5, 1.0, 4.0, 4.01, -1.0, 3e38, -3e38, 1e-45, math.nan, math.inf, -math.inf]
DIMS = [0, 1, 2, 3, 16, 20, 28, 32, 64, 128, 256, 257, -1, 2**31, 2**32 + 1, 2**62, 2**63 - 1, -(2**63)]
UINT8, FLOAT32 = common_pb2.DATA_TYPE_UINT8, common_pb2.DATA_TYPE_FLOAT32
MAX_TENSOR_BYTES = 1 << 20  # filled tensors stay below this; larger shapes get short data
IMAGE = common_pb2.Image(tensor=common_pb2.Tensor(shape=[28, 28], dtype=UINT8, data=bytes(784)))
IMAGES = common_pb2.Images(tensor=common_pb2.Tensor(shape=[2, 28, 28], dtype=UINT8, data=bytes(2 * 784)))
LATENTS = common_pb2.Tensor(shape=[2, 64], dtype=FLOAT32, data=bytes(2 * 64 * 4))  # acgan's and dcgan's
VALID = {  # requests each call answers OK (on the index `add_stored_items` makes), to mutate
    "/latentserve.v1.Models/ListModels": [models_pb2.ListModelsRequest()],
    "/latentserve.v1.Models/GetModel": [models_pb2.GetModelRequest(name="acgan")],
    "/latentserve.v1.Encoder/Encode": [encoder_pb2.EncodeRequest(images=IMAGES)],
    "/latentserve.v1.Search/Search": [search_pb2.SearchRequest(id=STORED_IDS[0], k=3), search_pb2.SearchRequest(image=IMAGE, space=search_pb2.SPACE_HASH)],
    "/latentserve.v1.Search/AddItems": [search_pb2.AddItemsRequest(items=[search_pb2.Item(id="new", image=IMAGE, label=1, metadata={"a": "b"})])],
    "/latentserve.v1.Search/DeleteItems": [search_pb2.DeleteItemsRequest(ids=["new"])],  # once AddItems added it
    "/latentserve.v1.Search/GetIndexStats": [search_pb2.GetIndexStatsRequest()],
    "/latentserve.v1.Search/SearchBatch": [search_pb2.SearchBatchRequest(
        queries=[search_pb2.Query(id=STORED_IDS[0]), search_pb2.Query(image=IMAGE)], k=3, filter=FILTERS[0])],
    "/latentserve.v1.Search/UpsertItems": [search_pb2.UpsertItemsRequest(items=[search_pb2.Item(id=STORED_IDS[2], image=IMAGE, metadata={"a": "c"})])],
    "/latentserve.v1.Search/GetItems": [search_pb2.GetItemsRequest(ids=STORED_IDS[:2], with_images=True)],
    "/latentserve.v1.Search/ListItems": [search_pb2.ListItemsRequest(page_size=2, filter=FILTERS[1])],
    "/latentserve.v1.Search/CreateCollection": [search_pb2.CreateCollectionRequest(name="fuzzed", keep_images=True)],
    "/latentserve.v1.Search/ListCollections": [search_pb2.ListCollectionsRequest()],
    "/latentserve.v1.Search/DropCollection": [search_pb2.DropCollectionRequest(name="fuzzed")],
    "/latentserve.v1.Search/ReindexCollection": [search_pb2.ReindexCollectionRequest(collection="fuzzed")],
    "/latentserve.v1.Search/PropagateLabels": [search_pb2.PropagateLabelsRequest(labels={STORED_IDS[0]: 0, STORED_IDS[1]: 1}, neighbours=2)],
    "/latentserve.v1.Generator/Generate": [
        generator_pb2.GenerateRequest(count=2, sampling=generator_pb2.Sampling(seed=1, start_index=5, truncation=1.0, labels=[3])),
        generator_pb2.GenerateRequest(model=common_pb2.ModelRef(name="dcgan"), latents=LATENTS, format=common_pb2.IMAGE_FORMAT_PNG),
    ],
    "/latentserve.v1.Generator/Interpolate": [
        generator_pb2.InterpolateRequest(seeds=generator_pb2.SeedPair(start=1, end=2), steps=3, label=4),
        generator_pb2.InterpolateRequest(model=common_pb2.ModelRef(name="dcgan"), latents=LATENTS, steps=3, method=generator_pb2.INTERPOLATION_SPHERICAL),
    ],
    "/latentserve.v1.Generator/GenerateStream": [generator_pb2.GenerateStreamRequest(count=4, chunk_size=2, sampling=generator_pb2.Sampling(labels=[1]))],
    "/latentserve.v1.Classifier/Classify": [classifier_pb2.ClassifyRequest(images=IMAGES, check_distribution=True)],
    "/latentserve.v1.Translator/Translate": [translator_pb2.TranslateRequest(direction="edges2digit", images=IMAGES, check_distribution=True)],
    "/latentserve.v1.Density/Score": [density_pb2.ScoreRequest(images=IMAGES)],
    "/latentserve.v1.Translator/ListDirections": [translator_pb2.ListDirectionsRequest()],
}


def request(rng: random.Random, method: str) -> Message:
    """A random, well-typed request for `method`: mostly a valid one with a few fields changed."""
    if rng.random() < 0.3:
        return message(rng, METHODS[method].input_type)
    changed = copy.deepcopy(rng.choice(VALID[method]))
    for _ in range(rng.randint(1, 3)):
        fields = list(_fields(changed))
        if fields:
            owner, field = rng.choice(fields)
            owner.ClearField(field.name)
            _set(rng, owner, field)
    return changed


def _fields(built: Message):
    """(message, field) for every field of `built` and of the messages in it (map entries aside), at any depth."""
    for field in built.DESCRIPTOR.fields:
        yield built, field
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        if field.is_repeated:
            children = getattr(built, field.name)
        else:
            children = [getattr(built, field.name)] if built.HasField(field.name) else []
        for child in children:
            yield from _fields(child)


def body(rng: random.Random, method: str) -> bytes:
    """A request body: mostly a random message, sometimes one cut or with bytes changed, sometimes noise."""
    kind = rng.random()
    if kind < 0.6:
        return request(rng, method).SerializeToString()
    if kind < 0.9:
        data = bytearray(request(rng, method).SerializeToString())
        for _ in range(rng.randint(1, 4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data[: rng.randint(0, len(data))] if rng.random() < 0.3 else data)
    return rng.randbytes(rng.choice([1, 2, 5, 30, 300]))


def message(rng: random.Random, descriptor: Descriptor) -> Message:
    if descriptor.full_name == common_pb2.Tensor.DESCRIPTOR.full_name:
        return tensor(rng)
    built = GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if rng.random() < 0.5:  # the other half keep their defaults, which lets more requests reach deeper checks
            _set(rng, built, field)
    return built


def _set(rng: random.Random, built: Message, field: FieldDescriptor) -> None:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
        for _ in range(_repeats(rng, 8)):
            getattr(built, field.name)[_value(rng, key, field.name)] = _value(rng, value, field.name)
    elif field.is_repeated:
        many = 8 if field.message_type or field.type == FieldDescriptor.TYPE_BYTES else 257  # over max_batch_images
        getattr(built, field.name).extend(_value(rng, field, field.name) for _ in range(_repeats(rng, many)))
    elif field.message_type is not None:
        getattr(built, field.name).CopyFrom(message(rng, field.message_type))
    else:
        setattr(built, field.name, _value(rng, field, field.name))


def tensor(rng: random.Random) -> common_pb2.Tensor:
    """Shapes of up to 40 dims, from plausible ([N, 28, 28], [N, latent_dim]) to overflowing; data that fills
    the shape when it is small enough (pixels in or out of range, NaN), else some bytes."""
    shape = rng.choice([
        [rng.randint(0, 3), 28, 28], [rng.randint(0, 3), 1, 28, 28], [28, 28], [1, 28, 28], [rng.randint(1, 3), rng.choice([16, 20, 64, 128])],
        [rng.choice(DIMS) for _ in range(rng.choice([0, 1, 2, 3, 4, 33, rng.randint(0, 40)]))],
        [2**32, 2**32], [0, 2**62], [1] * 33,  # a product that wraps to 0 in int64, an empty one numpy refuses, 33 dims
    ])
    dtype = rng.choice([UINT8, FLOAT32, common_pb2.DATA_TYPE_UNSPECIFIED, rng.choice([3, 99, -1, 2**31 - 1])])
    size = math.prod(shape) if all(n >= 0 for n in shape) else -1
    if dtype in (UINT8, FLOAT32) and 0 <= size * 4 <= MAX_TENSOR_BYTES and rng.random() < 0.8:
        if dtype == UINT8:
            data = rng.randbytes(size)
        else:
            values = np.random.default_rng(rng.getrandbits(32)).random(size, np.float32)
            if size and rng.random() < 0.3:
                values[rng.randrange(size)] = rng.choice(FLOATS)
            data = values.astype("<f4").tobytes()
    else:
        data = rng.randbytes(rng.choice([0, 1, 3, 784, 3136]))
    return common_pb2.Tensor(shape=shape, dtype=dtype, data=data)


def _repeats(rng: random.Random, most: int) -> int:
    return rng.choice([0, 1, 1, 2, 3, rng.randint(0, most), most])


def _value(rng: random.Random, field: FieldDescriptor, name: str):
    """A random value of a scalar or message field; `name` is the field's own (for a map, the map's)."""
    kind = field.type
    if field.message_type is not None:
        return message(rng, field.message_type)
    if kind == FieldDescriptor.TYPE_ENUM:
        return rng.choice([*field.enum_type.values_by_number] if rng.random() < 0.8 else [-1, 3, 9, 2**31 - 1])
    if kind == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return rng.choice([*FLOATS, rng.uniform(-5, 5)])
    if kind in INTEGER_RANGES:
        low, high = INTEGER_RANGES[kind]
        ends = [low, low + 1, high, high - 1, 2**31 - 1, -(2**31), 2**62]
        value = rng.choice([rng.randint(0, 3), rng.choice(LIMITS), rng.choice(ends), rng.randint(low, high)])
        return min(max(value, low), high)
    if kind == FieldDescriptor.TYPE_STRING:
        if name in STRINGS and rng.random() < 0.7:
            return rng.choice(STRINGS[name])
        return text(rng, rng.choice([0, 1, 8, 64, 300, 1000]))
    if kind == FieldDescriptor.TYPE_BYTES:
        return image_file(rng) if name in ("encoded", "images") else rng.randbytes(rng.choice([0, 1, 4, 5, 8, 100]))
    raise TypeError(f"no values for field {field.full_name}")


def text(rng: random.Random, max_bytes: int) -> str:
    """Random unicode (no surrogates) of at most `max_bytes` UTF-8 bytes."""
    chars, size = [], 0
    while True:
        char = chr(rng.choice([rng.randint(0x20, 0x7E), rng.randint(0x80, 0xD7FF), rng.randint(0xE000, 0x10FFFF), 0]))
        size += len(char.encode())
        if size > max_bytes:
            return "".join(chars)
        chars.append(char)


def image_file(rng: random.Random) -> bytes:
    """PNG or JPEG of a random size, cut short, or a PNG header declaring a huge image, or noise."""
    kind = rng.randrange(5)
    if kind == 0:
        return rng.randbytes(rng.choice([0, 8, 100]))
    pixels = np.random.default_rng(rng.getrandbits(32)).integers(0, 256, (rng.randint(1, 64), rng.randint(1, 64)), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=rng.choice(["PNG", "JPEG"]))
    data = buffer.getvalue()
    if kind == 1:
        return data[: rng.randrange(len(data))]
    if kind == 2 and data.startswith(b"\x89PNG"):
        return huge_png_header(rng.choice([5000, 70000, 2**31 - 1]), rng.choice([5000, 70000, 2**31 - 1])) + data[33:]
    return data


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk (8-bit grey) declaring width x height, with a valid CRC."""
    fields = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + fields + struct.pack(">I", zlib.crc32(fields))


def call(channel: grpc.Channel, method: str, data: bytes, timeout: float = 10) -> tuple[grpc.StatusCode, str]:
    """Send raw `data` as the request of `method`: (status, message). A server stream is read for up to
    three messages and then cancelled (OK)."""
    try:
        if METHODS[method].server_streaming:
            replies = channel.unary_stream(method)(data, timeout=timeout)
            for _ in zip(range(3), replies):
                pass
            replies.cancel()
        else:
            channel.unary_unary(method)(data, timeout=timeout)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def problems(code: grpc.StatusCode, details: str) -> list[str]:
    """What is wrong with an answer to a client's request: a status reserved for bugs, a heap address."""
    found = [] if code in ANSWERS else [f"status {code.name}: {details}"]
    return found + ([f"heap address in {details!r}"] if HEAP_ADDRESS.search(details) else [])


def add_stored_items(channel: grpc.Channel) -> None:
    """STORED_IDS, with labels and metadata, so fuzzed ids and label maps sometimes name stored items."""
    pixels = np.zeros((28, 28), np.uint8)
    image = common_pb2.Image(tensor=common_pb2.Tensor(shape=[28, 28], dtype=common_pb2.DATA_TYPE_UINT8, data=pixels.tobytes()))
    items = [search_pb2.Item(id=item_id, image=image, label=i, metadata={"n": str(i)}) for i, item_id in enumerate(STORED_IDS)]
    channel.unary_unary("/latentserve.v1.Search/AddItems")(search_pb2.AddItemsRequest(items=items).SerializeToString())


def serving(channel: grpc.Channel) -> bool:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(repository_root: Path, requests: int, seed: int = 0, workers: int = 4) -> None:
    """`requests` random requests over every call, from `workers` threads; request i is built from
    random.Random(f"{seed}-{i}"), so any one can be built again alone."""
    methods = sorted(METHODS)
    with gateway_process(repository_root, "--gallery", "none") as (target, pid):
        with grpc.insecure_channel(target) as channel:
            add_stored_items(channel)

            def send(i: int) -> tuple[str, grpc.StatusCode, list[str]]:
                rng = random.Random(f"{seed}-{i}")
                method = rng.choice(methods)
                code, details = call(channel, method, body(rng, method))
                return method, code, [f"request {i} ({method}): {problem}" for problem in problems(code, details)]

            began = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                answers = list(pool.map(send, range(requests)))
            elapsed = time.perf_counter() - began
            alive = serving(channel)
    counts = Counter((method, code.name) for method, code, _ in answers)
    codes = sorted({code for _, code in counts})
    print(f"{requests} requests in {elapsed:.0f} s ({requests / elapsed:.0f}/s, {workers} threads), seed {seed}; gateway serving at the end: {alive}\n")
    print("| call | requests | " + " | ".join(codes) + " |")
    print("|---|---|" + "---|" * len(codes))
    for method in methods:
        row = [counts[method, code] for code in codes]
        print(f"| {method.rsplit('/', 2)[1].removeprefix('latentserve.v1.')}/{method.rsplit('/', 1)[1]} | {sum(row)} | " + " | ".join(map(str, row)) + " |")
    totals = [sum(counts[method, code] for method in methods) for code in codes]
    print(f"| all | {requests} | " + " | ".join(map(str, totals)) + " |")
    found = [problem for _, _, found in answers for problem in found]
    print(f"\n{len(found)} answers a client must never get" + "".join(f"\n  {problem}" for problem in found[:20]))
