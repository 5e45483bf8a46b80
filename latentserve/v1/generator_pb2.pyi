from latentserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Interpolation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERPOLATION_UNSPECIFIED: _ClassVar[Interpolation]
    INTERPOLATION_LINEAR: _ClassVar[Interpolation]
    INTERPOLATION_SPHERICAL: _ClassVar[Interpolation]
INTERPOLATION_UNSPECIFIED: Interpolation
INTERPOLATION_LINEAR: Interpolation
INTERPOLATION_SPHERICAL: Interpolation

class Sampling(_message.Message):
    __slots__ = ("seed", "start_index", "truncation", "labels")
    SEED_FIELD_NUMBER: _ClassVar[int]
    START_INDEX_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    seed: int
    start_index: int
    truncation: float
    labels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seed: _Optional[int] = ..., start_index: _Optional[int] = ..., truncation: _Optional[float] = ..., labels: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "count", "sampling", "latents", "format")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    count: int
    sampling: Sampling
    latents: _common_pb2.Tensor
    format: _common_pb2.ImageFormat
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., count: _Optional[int] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., latents: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., format: _Optional[_Union[_common_pb2.ImageFormat, str]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("model", "images", "png", "latents", "labels")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    images: _common_pb2.Tensor
    png: _containers.RepeatedScalarFieldContainer[bytes]
    latents: _common_pb2.Tensor
    labels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., images: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., png: _Optional[_Iterable[bytes]] = ..., latents: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., labels: _Optional[_Iterable[int]] = ...) -> None: ...

class InterpolateRequest(_message.Message):
    __slots__ = ("model", "seeds", "latents", "steps", "method", "truncation", "label", "format")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SEEDS_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    seeds: SeedPair
    latents: _common_pb2.Tensor
    steps: int
    method: Interpolation
    truncation: float
    label: int
    format: _common_pb2.ImageFormat
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., seeds: _Optional[_Union[SeedPair, _Mapping]] = ..., latents: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., steps: _Optional[int] = ..., method: _Optional[_Union[Interpolation, str]] = ..., truncation: _Optional[float] = ..., label: _Optional[int] = ..., format: _Optional[_Union[_common_pb2.ImageFormat, str]] = ...) -> None: ...

class SeedPair(_message.Message):
    __slots__ = ("start", "end")
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    start: int
    end: int
    def __init__(self, start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class GenerateStreamRequest(_message.Message):
    __slots__ = ("model", "count", "sampling", "chunk_size", "format")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    count: int
    sampling: Sampling
    chunk_size: int
    format: _common_pb2.ImageFormat
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., count: _Optional[int] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., chunk_size: _Optional[int] = ..., format: _Optional[_Union[_common_pb2.ImageFormat, str]] = ...) -> None: ...

class GenerateChunk(_message.Message):
    __slots__ = ("model", "start_index", "images", "png", "labels")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    START_INDEX_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    start_index: int
    images: _common_pb2.Tensor
    png: _containers.RepeatedScalarFieldContainer[bytes]
    labels: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., start_index: _Optional[int] = ..., images: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., png: _Optional[_Iterable[bytes]] = ..., labels: _Optional[_Iterable[int]] = ...) -> None: ...
