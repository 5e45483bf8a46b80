"""Image messages -> model input (n, 1, 28, 28) float32 in [0, 1].

Encoded images (PNG or JPEG) of any size are converted to 8-bit grey and, if not 28x28, resized with
Pillow's area (box) filter; they are not inverted (MNIST digits are white on black). Raw tensors must be
exactly [28, 28] or [1, 28, 28], uint8 (0..255) or float32 (finite, 0..1).
"""
import io
import warnings

import numpy as np
from PIL import Image as PILImage

from latentserve.v1 import common_pb2
from serving.errors import InvalidArgument, ResourceExhausted

HEIGHT = WIDTH = 28
FORMATS = {"PNG", "JPEG"}
TENSOR_DTYPES = {common_pb2.DATA_TYPE_UINT8: np.dtype("<u1"), common_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4")}


def decode_batch(images, field: str, max_images: int, max_pixels: int) -> np.ndarray:
    if not images:
        raise InvalidArgument("must hold at least one image", field)
    if len(images) > max_images:
        raise ResourceExhausted(f"{len(images)} images; the limit is {max_images}", field)
    batch = np.empty((len(images), 1, HEIGHT, WIDTH), np.float32)
    for i, image in enumerate(images):
        batch[i] = decode_image(image, f"{field}[{i}]", max_pixels)
    return batch


def decode_image(image: common_pb2.Image, field: str, max_pixels: int) -> np.ndarray:
    kind = image.WhichOneof("data")
    if kind == "encoded":
        return _decode_encoded(image.encoded, f"{field}.encoded", max_pixels)
    if kind == "tensor":
        return _decode_tensor(image.tensor, f"{field}.tensor")
    raise InvalidArgument("set `encoded` or `tensor`", field)


def _decode_encoded(data: bytes, field: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
            picture = PILImage.open(io.BytesIO(data))
            if picture.format not in FORMATS:
                raise InvalidArgument(f"format {picture.format}; send PNG or JPEG", field)
            if picture.width * picture.height > max_pixels:
                raise ResourceExhausted(f"{picture.width}x{picture.height} pixels; the limit is {max_pixels}", field)
            grey = picture.convert("L")
    except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombWarning, PILImage.DecompressionBombError) as error:
        raise InvalidArgument(f"not a decodable PNG or JPEG image ({error})", field) from None
    if grey.size != (WIDTH, HEIGHT):
        grey = grey.resize((WIDTH, HEIGHT), PILImage.Resampling.BOX)
    return (np.asarray(grey, dtype=np.float32) / 255.0)[None]


def _decode_tensor(tensor: common_pb2.Tensor, field: str) -> np.ndarray:
    shape = tuple(tensor.shape)
    if shape not in ((HEIGHT, WIDTH), (1, HEIGHT, WIDTH)):
        raise InvalidArgument(f"shape {list(shape)}; want [28, 28] or [1, 28, 28]", f"{field}.shape")
    dtype = TENSOR_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise InvalidArgument("want DATA_TYPE_UINT8 or DATA_TYPE_FLOAT32", f"{field}.dtype")
    if len(tensor.data) != HEIGHT * WIDTH * dtype.itemsize:
        raise InvalidArgument(f"{len(tensor.data)} bytes; shape and dtype need {HEIGHT * WIDTH * dtype.itemsize}", f"{field}.data")
    values = np.frombuffer(tensor.data, dtype=dtype).reshape(1, HEIGHT, WIDTH)
    if dtype == np.uint8:
        return values * np.float32(1 / 255)
    if not np.isfinite(values).all():
        raise InvalidArgument("holds NaN or infinity", f"{field}.data")
    if values.min() < 0 or values.max() > 1:
        raise InvalidArgument("float32 pixels must lie in [0, 1]", f"{field}.data")
    return values.astype(np.float32)
