from latentserve.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Space(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPACE_UNSPECIFIED: _ClassVar[Space]
    SPACE_CODE: _ClassVar[Space]
    SPACE_HASH: _ClassVar[Space]

class IndexKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INDEX_KIND_UNSPECIFIED: _ClassVar[IndexKind]
    INDEX_KIND_EXACT: _ClassVar[IndexKind]
    INDEX_KIND_IVF: _ClassVar[IndexKind]
    INDEX_KIND_HNSW: _ClassVar[IndexKind]

class Propagation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROPAGATION_UNSPECIFIED: _ClassVar[Propagation]
    PROPAGATION_SPREADING: _ClassVar[Propagation]
    PROPAGATION_HARMONIC: _ClassVar[Propagation]
SPACE_UNSPECIFIED: Space
SPACE_CODE: Space
SPACE_HASH: Space
INDEX_KIND_UNSPECIFIED: IndexKind
INDEX_KIND_EXACT: IndexKind
INDEX_KIND_IVF: IndexKind
INDEX_KIND_HNSW: IndexKind
PROPAGATION_UNSPECIFIED: Propagation
PROPAGATION_SPREADING: Propagation
PROPAGATION_HARMONIC: Propagation

class SearchRequest(_message.Message):
    __slots__ = ("image", "code", "id", "k", "space", "collection", "filter")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    code: _common_pb2.Code
    id: str
    k: int
    space: Space
    collection: str
    filter: str
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., code: _Optional[_Union[_common_pb2.Code, _Mapping]] = ..., id: _Optional[str] = ..., k: _Optional[int] = ..., space: _Optional[_Union[Space, str]] = ..., collection: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("hits",)
    HITS_FIELD_NUMBER: _ClassVar[int]
    hits: _containers.RepeatedCompositeFieldContainer[Hit]
    def __init__(self, hits: _Optional[_Iterable[_Union[Hit, _Mapping]]] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("image", "code", "id")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    image: _common_pb2.Image
    code: _common_pb2.Code
    id: str
    def __init__(self, image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., code: _Optional[_Union[_common_pb2.Code, _Mapping]] = ..., id: _Optional[str] = ...) -> None: ...

class SearchBatchRequest(_message.Message):
    __slots__ = ("queries", "k", "space", "collection", "filter")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    SPACE_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    queries: _containers.RepeatedCompositeFieldContainer[Query]
    k: int
    space: Space
    collection: str
    filter: str
    def __init__(self, queries: _Optional[_Iterable[_Union[Query, _Mapping]]] = ..., k: _Optional[int] = ..., space: _Optional[_Union[Space, str]] = ..., collection: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class SearchBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResponse, _Mapping]]] = ...) -> None: ...

class Hit(_message.Message):
    __slots__ = ("id", "distance", "label", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    DISTANCE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    distance: float
    label: int
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., distance: _Optional[float] = ..., label: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Item(_message.Message):
    __slots__ = ("id", "image", "label", "metadata", "code")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: _common_pb2.Image
    label: int
    metadata: _containers.ScalarMap[str, str]
    code: _common_pb2.Code
    def __init__(self, id: _Optional[str] = ..., image: _Optional[_Union[_common_pb2.Image, _Mapping]] = ..., label: _Optional[int] = ..., metadata: _Optional[_Mapping[str, str]] = ..., code: _Optional[_Union[_common_pb2.Code, _Mapping]] = ...) -> None: ...

class AddItemsRequest(_message.Message):
    __slots__ = ("items", "collection")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    collection: str
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., collection: _Optional[str] = ...) -> None: ...

class AddItemsResponse(_message.Message):
    __slots__ = ("added",)
    ADDED_FIELD_NUMBER: _ClassVar[int]
    added: int
    def __init__(self, added: _Optional[int] = ...) -> None: ...

class UpsertItemsRequest(_message.Message):
    __slots__ = ("items", "collection")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    collection: str
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., collection: _Optional[str] = ...) -> None: ...

class UpsertItemsResponse(_message.Message):
    __slots__ = ("added", "replaced")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    added: int
    replaced: int
    def __init__(self, added: _Optional[int] = ..., replaced: _Optional[int] = ...) -> None: ...

class GetItemsRequest(_message.Message):
    __slots__ = ("ids", "collection", "with_images")
    IDS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    WITH_IMAGES_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    collection: str
    with_images: bool
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., collection: _Optional[str] = ..., with_images: _Optional[bool] = ...) -> None: ...

class GetItemsResponse(_message.Message):
    __slots__ = ("items", "missing")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    missing: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., missing: _Optional[_Iterable[str]] = ...) -> None: ...

class ListItemsRequest(_message.Message):
    __slots__ = ("collection", "page_size", "page_token", "filter", "with_images")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    WITH_IMAGES_FIELD_NUMBER: _ClassVar[int]
    collection: str
    page_size: int
    page_token: str
    filter: str
    with_images: bool
    def __init__(self, collection: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., filter: _Optional[str] = ..., with_images: _Optional[bool] = ...) -> None: ...

class ListItemsResponse(_message.Message):
    __slots__ = ("items", "next_page_token")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Item]
    next_page_token: str
    def __init__(self, items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteItemsRequest(_message.Message):
    __slots__ = ("ids", "collection", "filter")
    IDS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    collection: str
    filter: str
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., collection: _Optional[str] = ..., filter: _Optional[str] = ...) -> None: ...

class DeleteItemsResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class GetIndexStatsRequest(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: str
    def __init__(self, collection: _Optional[str] = ...) -> None: ...

class IndexStats(_message.Message):
    __slots__ = ("items", "model", "code_dim", "num_bits", "collection", "keep_images", "index", "approximate", "reindex")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CODE_DIM_FIELD_NUMBER: _ClassVar[int]
    NUM_BITS_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    KEEP_IMAGES_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    APPROXIMATE_FIELD_NUMBER: _ClassVar[int]
    REINDEX_FIELD_NUMBER: _ClassVar[int]
    items: int
    model: _common_pb2.ModelRef
    code_dim: int
    num_bits: int
    collection: str
    keep_images: bool
    index: IndexSpec
    approximate: bool
    reindex: Reindex
    def __init__(self, items: _Optional[int] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., code_dim: _Optional[int] = ..., num_bits: _Optional[int] = ..., collection: _Optional[str] = ..., keep_images: _Optional[bool] = ..., index: _Optional[_Union[IndexSpec, _Mapping]] = ..., approximate: _Optional[bool] = ..., reindex: _Optional[_Union[Reindex, _Mapping]] = ...) -> None: ...

class Reindex(_message.Message):
    __slots__ = ("model", "done", "total", "error")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    model: _common_pb2.ModelRef
    done: int
    total: int
    error: str
    def __init__(self, model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class ReindexCollectionRequest(_message.Message):
    __slots__ = ("collection", "model")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    collection: str
    model: _common_pb2.ModelRef
    def __init__(self, collection: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ...) -> None: ...

class IndexSpec(_message.Message):
    __slots__ = ("kind", "nlist", "nprobe", "m", "ef_search")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NLIST_FIELD_NUMBER: _ClassVar[int]
    NPROBE_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    EF_SEARCH_FIELD_NUMBER: _ClassVar[int]
    kind: IndexKind
    nlist: int
    nprobe: int
    m: int
    ef_search: int
    def __init__(self, kind: _Optional[_Union[IndexKind, str]] = ..., nlist: _Optional[int] = ..., nprobe: _Optional[int] = ..., m: _Optional[int] = ..., ef_search: _Optional[int] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "model", "keep_images", "index")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KEEP_IMAGES_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: _common_pb2.ModelRef
    keep_images: bool
    index: IndexSpec
    def __init__(self, name: _Optional[str] = ..., model: _Optional[_Union[_common_pb2.ModelRef, _Mapping]] = ..., keep_images: _Optional[bool] = ..., index: _Optional[_Union[IndexSpec, _Mapping]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[IndexStats]
    def __init__(self, collections: _Optional[_Iterable[_Union[IndexStats, _Mapping]]] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PropagateLabelsRequest(_message.Message):
    __slots__ = ("labels", "neighbours", "method", "collection")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    LABELS_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.ScalarMap[str, int]
    neighbours: int
    method: Propagation
    collection: str
    def __init__(self, labels: _Optional[_Mapping[str, int]] = ..., neighbours: _Optional[int] = ..., method: _Optional[_Union[Propagation, str]] = ..., collection: _Optional[str] = ...) -> None: ...

class PredictedLabel(_message.Message):
    __slots__ = ("id", "label", "confidence")
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    label: int
    confidence: float
    def __init__(self, id: _Optional[str] = ..., label: _Optional[int] = ..., confidence: _Optional[float] = ...) -> None: ...

class PropagateLabelsResponse(_message.Message):
    __slots__ = ("predictions",)
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[PredictedLabel]
    def __init__(self, predictions: _Optional[_Iterable[_Union[PredictedLabel, _Mapping]]] = ...) -> None: ...
