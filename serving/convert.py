"""Converters between protobuf messages and numpy arrays, for every capability.

Image messages -> model input (n, 1, 28, 28) float32 in [0, 1].

Encoded images (PNG or JPEG) of any size are converted to 8-bit grey and, if not 28x28, resized with
Pillow's area (box) filter, or refused when the caller turns resizing off (`decode_batch(resize=False)`:
a translation that should map pixels one to one); they are not inverted (MNIST digits are white on black).
Raw tensors must be exactly 28x28 per image ([28, 28] or [1, 28, 28]; a batch adds a leading N), uint8
(0..255) or float32 (finite, 0..1). A batch tensor is converted in one step, which is what makes it the
fast path. Every shape is checked (rank, each size, their product against the bytes sent) before any
array is made, and an encoded image's declared size before any pixel is decoded.
"""
import io
import math
import warnings

import numpy as np
from PIL import Image as PILImage

from latentserve.v1 import common_pb2
from latentserve.contract import HEIGHT, WIDTH
from serving.errors import InvalidArgument, ResourceExhausted

FORMATS = {"PNG", "JPEG"}
TENSOR_DTYPES = {common_pb2.DATA_TYPE_UINT8: np.dtype("<u1"), common_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4")}
API_DTYPES = {dtype.name: code for code, dtype in TENSOR_DTYPES.items()}  # numpy name -> DataType
MAX_RANK = 32  # numpy's
IMAGE_SHAPES = ((HEIGHT, WIDTH), (1, HEIGHT, WIDTH))


def decode_batch(images: common_pb2.Images, field: str, max_images: int, max_pixels: int, *, resize: bool = True) -> np.ndarray:
    kind = images.WhichOneof("data")
    if kind == "tensor":
        shape = tuple(images.tensor.shape)
        count = shape[0] if shape else 0
        if shape[1:] not in IMAGE_SHAPES or count < 0:
            raise InvalidArgument(f"shape {_shown(shape)}; want [N, 28, 28] or [N, 1, 28, 28]", f"{field}.tensor.shape")
    elif kind == "encoded":
        count = len(images.encoded.images)
    else:
        raise InvalidArgument("set `encoded` or `tensor`", field)
    if count == 0:
        raise InvalidArgument("must hold at least one image", field)
    if count > max_images:
        raise ResourceExhausted(f"{count} images; the limit is {max_images}", field)
    if kind == "tensor":
        return _pixels(images.tensor, f"{field}.tensor", count)
    batch = np.empty((count, 1, HEIGHT, WIDTH), np.float32)
    for i, data in enumerate(images.encoded.images):
        batch[i] = _decode_encoded(data, f"{field}.encoded.images[{i}]", max_pixels, resize)
    return batch


def decode_image(image: common_pb2.Image, field: str, max_pixels: int) -> np.ndarray:
    """One image -> (1, 28, 28)."""
    kind = image.WhichOneof("data")
    if kind == "encoded":
        return _decode_encoded(image.encoded, f"{field}.encoded", max_pixels)
    if kind == "tensor":
        if tuple(image.tensor.shape) not in IMAGE_SHAPES:
            raise InvalidArgument(f"shape {_shown(image.tensor.shape)}; want [28, 28] or [1, 28, 28]", f"{field}.tensor.shape")
        return _pixels(image.tensor, f"{field}.tensor", 1)[0]
    raise InvalidArgument("set `encoded` or `tensor`", field)


def _decode_encoded(data: bytes, field: str, max_pixels: int, resize: bool = True) -> np.ndarray:
    """PNG or JPEG bytes -> (1, 28, 28). `open` reads only the header: the declared size is checked first."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)  # the size is checked below
            picture = PILImage.open(io.BytesIO(data))
    except PILImage.DecompressionBombError:  # Pillow's own limit, above ours unless max_image_pixels is raised
        raise ResourceExhausted(f"over the limit of {max_pixels} pixels", field) from None
    except Exception:  # noqa: BLE001 - whatever Pillow raises on bytes it cannot read; its messages hold object reprs
        raise InvalidArgument("not a decodable PNG or JPEG image", field) from None
    if picture.width * picture.height > max_pixels:
        raise ResourceExhausted(f"{picture.width}x{picture.height} pixels; the limit is {max_pixels}", field)
    if picture.format not in FORMATS:
        raise InvalidArgument(f"format {picture.format}; send PNG or JPEG", field)
    try:
        grey = picture.convert("L")
    except Exception:  # noqa: BLE001 - a truncated or corrupt file
        raise InvalidArgument("not a decodable PNG or JPEG image", field) from None
    if grey.size != (WIDTH, HEIGHT):
        if not resize:
            raise InvalidArgument(f"{grey.width}x{grey.height} pixels; want 28x28 (resizing is off)", field)
        grey = grey.resize((WIDTH, HEIGHT), PILImage.Resampling.BOX)
    return (np.asarray(grey, dtype=np.float32) / 255.0)[None]


def _pixels(tensor: common_pb2.Tensor, field: str, count: int) -> np.ndarray:
    """`count` images of a tensor whose shape is already checked (`count` 1 or more) -> (count, 1, 28, 28) float32."""
    dtype = TENSOR_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise InvalidArgument("want DATA_TYPE_UINT8 or DATA_TYPE_FLOAT32", f"{field}.dtype")
    size = count * HEIGHT * WIDTH * dtype.itemsize
    if len(tensor.data) != size:
        raise InvalidArgument(f"{len(tensor.data)} bytes; shape and dtype need {size}", f"{field}.data")
    values = np.frombuffer(tensor.data, dtype=dtype).reshape(count, 1, HEIGHT, WIDTH)
    if dtype == np.uint8:
        return values / np.float32(255)  # as an encoded image's pixels are scaled: the same image either way, bit for bit
    if not np.isfinite(values).all():
        raise InvalidArgument("holds NaN or infinity", f"{field}.data")
    if values.min() < 0 or values.max() > 1:
        raise InvalidArgument("float32 pixels must lie in [0, 1]", f"{field}.data")
    return values.astype(np.float32)


def encode_png(images: np.ndarray) -> list[bytes]:
    """(n, 1, 28, 28) float32 in [0, 1] -> 8-bit grey PNG files."""
    files = []
    for pixels in (np.clip(images[:, 0], 0, 1) * 255).round().astype(np.uint8):
        buffer = io.BytesIO()
        PILImage.fromarray(pixels).save(buffer, format="PNG")
        files.append(buffer.getvalue())
    return files


def tensor(array: np.ndarray, dtype: int) -> common_pb2.Tensor:
    return common_pb2.Tensor(shape=array.shape, dtype=dtype, data=np.ascontiguousarray(array).tobytes())


def float_tensor(message: common_pb2.Tensor, field: str) -> np.ndarray:
    """A float32 Tensor message -> array of its shape."""
    if message.dtype != common_pb2.DATA_TYPE_FLOAT32:
        raise InvalidArgument("want DATA_TYPE_FLOAT32", f"{field}.dtype")
    shape = tuple(message.shape)
    if len(shape) > MAX_RANK or any(n < 0 for n in shape):
        raise InvalidArgument(f"shape {_shown(shape)}; want at most {MAX_RANK} sizes, each 0 or more", f"{field}.shape")
    if len(message.data) != 4 * math.prod(shape):  # Python integers: no overflow
        raise InvalidArgument(f"{len(message.data)} bytes do not fill shape {_shown(shape)} of float32", f"{field}.data")
    if not message.data:  # numpy refuses some empty shapes ([0, 2**62]); none is a request
        raise InvalidArgument(f"shape {_shown(shape)} holds no values", f"{field}.shape")
    return np.frombuffer(message.data, "<f4").reshape(shape)


def _shown(shape) -> str:
    """A client's shape for an error message, short however many sizes it has."""
    return str(list(shape)) if len(shape) <= 8 else f"of {len(shape)} sizes"


def wants_png(image_format: int) -> bool:
    """Whether images go out as PNG files (else as one float32 tensor)."""
    if image_format not in (common_pb2.IMAGE_FORMAT_UNSPECIFIED, common_pb2.IMAGE_FORMAT_TENSOR, common_pb2.IMAGE_FORMAT_PNG):
        raise InvalidArgument(f"unknown format {image_format}", "format")
    return image_format == common_pb2.IMAGE_FORMAT_PNG


def image_fields(images: np.ndarray, png: bool) -> dict:
    """The `png` or `images` field of a response carrying (n, 1, 28, 28) images."""
    return {"png": encode_png(images)} if png else {"images": tensor(images[:, 0], common_pb2.DATA_TYPE_FLOAT32)}
