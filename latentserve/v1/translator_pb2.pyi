from latentserve.v1 import common_pb2 as _common_pb2
from latentserve.v1 import density_pb2 as _density_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResizeMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESIZE_UNSPECIFIED: _ClassVar[ResizeMode]
    RESIZE_AREA: _ClassVar[ResizeMode]
    RESIZE_NONE: _ClassVar[ResizeMode]
RESIZE_UNSPECIFIED: ResizeMode
RESIZE_AREA: ResizeMode
RESIZE_NONE: ResizeMode

class TranslateRequest(_message.Message):
    __slots__ = ("direction", "model", "images", "resize", "format", "check_distribution")
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    CHECK_DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    direction: str
    model: _common_pb2.ModelRef
    images: _common_pb2.Images
    resize: ResizeMode
    format: _common_pb2.ImageFormat
    check_distribution: bool
    def __init__(self, direction: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., images: _Optional[_Union[_common_pb2.Images, _Mapping]] = ..., resize: _Optional[_Union[ResizeMode, str]] = ..., format: _Optional[_Union[_common_pb2.ImageFormat, str]] = ..., check_distribution: _Optional[bool] = ...) -> None: ...

class TranslateResponse(_message.Message):
    __slots__ = ("model", "direction", "images", "png", "distribution")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PNG_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    direction: str
    images: _common_pb2.Tensor
    png: _containers.RepeatedScalarFieldContainer[bytes]
    distribution: _density_pb2.Distribution
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., direction: _Optional[str] = ..., images: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., png: _Optional[_Iterable[bytes]] = ..., distribution: _Optional[_Union[_density_pb2.Distribution, _Mapping]] = ...) -> None: ...

class ListDirectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDirectionsResponse(_message.Message):
    __slots__ = ("directions",)
    DIRECTIONS_FIELD_NUMBER: _ClassVar[int]
    directions: _containers.RepeatedCompositeFieldContainer[Direction]
    def __init__(self, directions: _Optional[_Iterable[_Union[Direction, _Mapping]]] = ...) -> None: ...

class Direction(_message.Message):
    __slots__ = ("name", "model", "versions", "input_dims", "output_dims")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    versions: _containers.RepeatedScalarFieldContainer[int]
    input_dims: _containers.RepeatedScalarFieldContainer[int]
    output_dims: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., versions: _Optional[_Iterable[int]] = ..., input_dims: _Optional[_Iterable[int]] = ..., output_dims: _Optional[_Iterable[int]] = ...) -> None: ...
