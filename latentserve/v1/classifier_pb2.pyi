from latentserve.v1 import common_pb2 as _common_pb2
from latentserve.v1 import density_pb2 as _density_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "images", "check_distribution")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    CHECK_DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    images: _common_pb2.Images
    check_distribution: bool
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., images: _Optional[_Union[_common_pb2.Images, _Mapping]] = ..., check_distribution: _Optional[bool] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model", "probabilities", "labels", "confidences", "entropies", "distribution")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCES_FIELD_NUMBER: _ClassVar[int]
    ENTROPIES_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    probabilities: _common_pb2.Tensor
    labels: _containers.RepeatedScalarFieldContainer[int]
    confidences: _containers.RepeatedScalarFieldContainer[float]
    entropies: _containers.RepeatedScalarFieldContainer[float]
    distribution: _density_pb2.Distribution
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., probabilities: _Optional[_Union[_common_pb2.Tensor, _Mapping]] = ..., labels: _Optional[_Iterable[int]] = ..., confidences: _Optional[_Iterable[float]] = ..., entropies: _Optional[_Iterable[float]] = ..., distribution: _Optional[_Union[_density_pb2.Distribution, _Mapping]] = ...) -> None: ...
