from latentserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ScoreRequest(_message.Message):
    __slots__ = ("model", "images")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    images: _common_pb2.Images
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., images: _Optional[_Union[_common_pb2.Images, _Mapping]] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("model", "log_likelihoods", "bits_per_dim", "distribution")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LOG_LIKELIHOODS_FIELD_NUMBER: _ClassVar[int]
    BITS_PER_DIM_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    log_likelihoods: _containers.RepeatedScalarFieldContainer[float]
    bits_per_dim: _containers.RepeatedScalarFieldContainer[float]
    distribution: Distribution
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., log_likelihoods: _Optional[_Iterable[float]] = ..., bits_per_dim: _Optional[_Iterable[float]] = ..., distribution: _Optional[_Union[Distribution, _Mapping]] = ...) -> None: ...

class Distribution(_message.Message):
    __slots__ = ("scores", "out_of_distribution", "threshold", "model")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    out_of_distribution: _containers.RepeatedScalarFieldContainer[bool]
    threshold: float
    model: _common_pb2.ModelRef
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., out_of_distribution: _Optional[_Iterable[bool]] = ..., threshold: _Optional[float] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...
