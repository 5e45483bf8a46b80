"""Collections, items, filtered and batch search over real gRPC, on both backends: embedded (FAISS +
SQLite) and Milvus (Milvus Lite, a file in the gateway's data directory); then what only Milvus needs."""
import threading
import time
from contextlib import contextmanager

import grpc
import numpy as np
import pytest
from pymilvus import MilvusClient

from latentserve.files import PARTIAL
from latentserve.v1 import common_pb2, search_pb2, search_pb2_grpc
from serving.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from serving.index import Binding, IndexLocked, IndexOptions, NewItem
from serving.milvus_index import MAX_IMAGE_BYTES, MilvusCollections
from serving.settings import Settings
from tests.conftest import RunningGateway, assert_refused

ITEMS = 120


@pytest.fixture(scope="module", params=["embedded", "milvus"])
def backend(request) -> str:
    """Every test that takes it, directly or through `gateway`, runs on both backends."""
    return request.param


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, backend):
    running = RunningGateway(data_dir=tmp_path_factory.mktemp("data"), gallery="none", max_k=50, index_backend=backend).start()
    yield running
    running.stop()


@contextmanager
def milvus_client(settings: Settings):
    """A client of the gateway's Milvus Lite file on a connection of its own (clients of one file share
    one connection by default, and closing it would break the gateway's)."""
    client = MilvusClient(settings.milvus_uri, alias="tests")
    try:
        yield client
    finally:
        client.close()


def stored_collections(settings: Settings) -> list[str]:
    """Where the collections' items live: directories under data_dir/collections, or Milvus collections."""
    if settings.index_backend == "embedded":
        return [d.name for d in (settings.data_dir / "collections").iterdir() if d.is_dir()]
    with milvus_client(settings) as client:
        return client.list_collections()


@pytest.fixture(scope="module")
def stub(gateway):
    with gateway.channel() as channel:
        yield search_pb2_grpc.SearchStub(channel)


def image(pixels: np.ndarray) -> common_pb2.Image:
    pixels = (pixels * 255).round().astype(np.uint8)
    return common_pb2.Image(tensor=common_pb2.Tensor(shape=pixels.shape, dtype=common_pb2.DATA_TYPE_UINT8, data=pixels.tobytes()))


def item(i: int, mnist, **metadata) -> search_pb2.Item:
    return search_pb2.Item(
        id=f"item-{i}", image=image(mnist.test.images[i]), label=int(mnist.test.labels[i]),
        metadata={"source": "upload" if i % 2 else "crawl", **metadata},
    )


@pytest.fixture(scope="module")
def catalogue(stub, mnist):
    """A collection of ITEMS MNIST test images that keeps them, labels and a `source` in their metadata."""
    stub.CreateCollection(search_pb2.CreateCollectionRequest(name="catalogue", keep_images=True))
    for start in range(0, ITEMS, 40):
        stub.AddItems(search_pb2.AddItemsRequest(collection="catalogue", items=[item(i, mnist) for i in range(start, start + 40)]))
    return "catalogue"


def test_collections_are_created_described_listed_and_dropped(stub):
    created = stub.CreateCollection(search_pb2.CreateCollectionRequest(name="scratch"))
    assert (created.collection, created.items, created.keep_images) == ("scratch", 0, False)
    assert created.model.name == "autoencoder" and created.model.version > 0 and created.code_dim > 0
    names = [c.collection for c in stub.ListCollections(search_pb2.ListCollectionsRequest()).collections]
    assert "default" in names and "scratch" in names
    assert stub.GetIndexStats(search_pb2.GetIndexStatsRequest(collection="scratch")).collection == "scratch"
    stub.DropCollection(search_pb2.DropCollectionRequest(name="scratch"))
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetIndexStats(search_pb2.GetIndexStatsRequest(collection="scratch"))
    assert_refused(raised.value, grpc.StatusCode.NOT_FOUND, "collection")


@pytest.mark.parametrize("call, request_, code, field", [
    ("CreateCollection", search_pb2.CreateCollectionRequest(name="default"), grpc.StatusCode.ALREADY_EXISTS, "name"),
    ("CreateCollection", search_pb2.CreateCollectionRequest(name="bad name"), grpc.StatusCode.INVALID_ARGUMENT, "name"),
    ("CreateCollection", search_pb2.CreateCollectionRequest(name="x", model=common_pb2.ModelRef(name="dcgan")), grpc.StatusCode.NOT_FOUND, "model.name"),
    ("CreateCollection", search_pb2.CreateCollectionRequest(name="x", index=search_pb2.IndexSpec(nlist=4)), grpc.StatusCode.INVALID_ARGUMENT, "index"),
    ("CreateCollection", search_pb2.CreateCollectionRequest(name="x", index=search_pb2.IndexSpec(kind=7)), grpc.StatusCode.INVALID_ARGUMENT, "index.kind"),
    ("CreateCollection", search_pb2.CreateCollectionRequest(
        name="x", index=search_pb2.IndexSpec(kind=search_pb2.INDEX_KIND_IVF, nlist=4, nprobe=5)), grpc.StatusCode.RESOURCE_EXHAUSTED, "index.nprobe"),
    ("DropCollection", search_pb2.DropCollectionRequest(name="default"), grpc.StatusCode.FAILED_PRECONDITION, "default"),
    ("DropCollection", search_pb2.DropCollectionRequest(name="nothing-here"), grpc.StatusCode.NOT_FOUND, "collection"),
    ("Search", search_pb2.SearchRequest(collection="nothing-here", id="item-0"), grpc.StatusCode.NOT_FOUND, "collection"),
    ("Search", search_pb2.SearchRequest(code=common_pb2.Code(values=[0.0] * 3)), grpc.StatusCode.INVALID_ARGUMENT, "code.values"),
    ("Search", search_pb2.SearchRequest(id="item-0", k=51), grpc.StatusCode.RESOURCE_EXHAUSTED, "k"),
    ("SearchBatch", search_pb2.SearchBatchRequest(queries=[search_pb2.Query(id="a")] * 6, k=10), grpc.StatusCode.RESOURCE_EXHAUSTED, "k"),
    ("SearchBatch", search_pb2.SearchBatchRequest(queries=[search_pb2.Query(), search_pb2.Query(id="a")]), grpc.StatusCode.INVALID_ARGUMENT, "queries[0].query"),
    ("ListItems", search_pb2.ListItemsRequest(page_token="bm90IGEgdG9rZW4="), grpc.StatusCode.INVALID_ARGUMENT, "page_token"),
    ("DeleteItems", search_pb2.DeleteItemsRequest(), grpc.StatusCode.INVALID_ARGUMENT, "ids"),
    ("DeleteItems", search_pb2.DeleteItemsRequest(ids=["a"], filter="label == 1"), grpc.StatusCode.INVALID_ARGUMENT, "ids"),
])
def test_bad_requests_get_their_precise_status(stub, call, request_, code, field):
    with pytest.raises(grpc.RpcError) as raised:
        getattr(stub, call)(request_)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        assert raised.value.code() == code and field in raised.value.details()
    else:
        assert_refused(raised.value, code, field)


def test_an_ivf_collection_trains_once_it_holds_30_items_a_list(stub, backend, mnist):
    spec = search_pb2.IndexSpec(kind=search_pb2.INDEX_KIND_IVF, nlist=2, nprobe=1)
    created = stub.CreateCollection(search_pb2.CreateCollectionRequest(name="ivf", index=spec))
    assert created.index == spec and not created.approximate
    stub.AddItems(search_pb2.AddItemsRequest(collection="ivf", items=[item(i, mnist) for i in range(59)]))
    assert not stub.GetIndexStats(search_pb2.GetIndexStatsRequest(collection="ivf")).approximate
    stub.AddItems(search_pb2.AddItemsRequest(collection="ivf", items=[item(59, mnist)]))
    # The embedded backend trains at 30 x nlist items; Milvus says approximate once it has indexed rows,
    # which Milvus Lite never does (it searches every row exactly).
    assert stub.GetIndexStats(search_pb2.GetIndexStatsRequest(collection="ivf")).approximate == (backend == "embedded")
    hits = stub.Search(search_pb2.SearchRequest(collection="ivf", image=image(mnist.test.images[7]), k=1)).hits
    assert hits[0].id == "item-7" and hits[0].distance < 1e-6
    defaults = stub.CreateCollection(search_pb2.CreateCollectionRequest(name="ivf-defaults", index=search_pb2.IndexSpec(kind=search_pb2.INDEX_KIND_IVF)))
    assert (defaults.index.nlist, defaults.index.nprobe) == (1024, 8)
    for name in ("ivf", "ivf-defaults"):
        stub.DropCollection(search_pb2.DropCollectionRequest(name=name))


def test_get_returns_what_was_stored_with_the_image_kept(stub, catalogue, mnist):
    got = stub.GetItems(search_pb2.GetItemsRequest(collection=catalogue, ids=["item-3", "absent", "item-0"], with_images=True))
    assert [i.id for i in got.items] == ["item-3", "item-0"] and list(got.missing) == ["absent"]
    assert got.items[0].label == mnist.test.labels[3] and got.items[0].metadata["source"] == "upload"
    assert got.items[0].image == item(3, mnist).image
    assert len(got.items[0].code.values) > 0 and got.items[0].code.num_bits > 0
    without = stub.GetItems(search_pb2.GetItemsRequest(collection=catalogue, ids=["item-3"]))
    assert not without.items[0].HasField("image")


def test_pages_cover_every_item_once(stub, catalogue):
    seen, token, pages = [], "", 0
    while True:
        page = stub.ListItems(search_pb2.ListItemsRequest(collection=catalogue, page_size=25, page_token=token))
        seen += [i.id for i in page.items]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert sorted(seen) == sorted(f"item-{i}" for i in range(ITEMS)) and len(seen) == ITEMS
    assert pages == 5  # 25, 25, 25, 25 and 20: no empty last page


def test_pages_stop_short_of_the_message_limit(start_gateway, tmp_path, backend, mnist):
    # about 4 KB of metadata an item, 96 KiB messages (64 KiB kept free): a page holds what fits, the token goes on
    gateway = start_gateway(data_dir=tmp_path, gallery="none", max_message_bytes=96 * 1024, max_k=10, max_batch_images=16,
                            propagation_chunk_items=100, index_backend=backend)
    with gateway.channel() as channel:
        stub = search_pb2_grpc.SearchStub(channel)
        stub.AddItems(search_pb2.AddItemsRequest(items=[item(i, mnist, note="x" * 3900) for i in range(16)]))
        sizes, token, seen = [], "", []
        while True:
            page = stub.ListItems(search_pb2.ListItemsRequest(page_size=1000, page_token=token))
            sizes.append(page.ByteSize())
            seen += [i.id for i in page.items]
            if not (token := page.next_page_token):
                break
    assert sorted(seen) == sorted(f"item-{i}" for i in range(16)) and max(sizes) <= 96 * 1024 and len(sizes) > 1


def test_filters_select_inside_the_index(stub, catalogue, mnist):
    labels = mnist.test.labels[:ITEMS]
    threes = {f"item-{i}" for i in np.flatnonzero(labels == 3)}
    hits = stub.Search(search_pb2.SearchRequest(collection=catalogue, id="item-0", k=len(threes), filter="label == 3")).hits
    assert {h.id for h in hits} == threes - {"item-0"}  # k hits when k items match, however far they are
    uploads = stub.Search(search_pb2.SearchRequest(
        collection=catalogue, id="item-1", k=50, filter='metadata["source"] == "upload" and label in [1, 7]')).hits
    expected = {f"item-{i}" for i in range(1, ITEMS, 2) if labels[i] in (1, 7)} - {"item-1"}
    assert {h.id for h in uploads} == expected and all(h.metadata["source"] == "upload" for h in uploads)
    none = stub.Search(search_pb2.SearchRequest(collection=catalogue, id="item-0", filter="label == 42"))
    assert list(none.hits) == []
    with pytest.raises(grpc.RpcError) as raised:
        stub.Search(search_pb2.SearchRequest(collection=catalogue, id="item-0", filter="label === 3"))
    assert_refused(raised.value, grpc.StatusCode.INVALID_ARGUMENT, "filter")
    listed = stub.ListItems(search_pb2.ListItemsRequest(collection=catalogue, page_size=1000, filter="label == 3"))
    assert {i.id for i in listed.items} == threes


def test_a_batch_search_equals_single_searches(stub, catalogue, mnist):
    code = stub.GetItems(search_pb2.GetItemsRequest(collection=catalogue, ids=["item-5"])).items[0].code
    queries = [search_pb2.Query(id="item-2"), search_pb2.Query(image=image(mnist.test.images[200])), search_pb2.Query(code=code)]
    for space in (search_pb2.SPACE_CODE, search_pb2.SPACE_HASH):
        batch = stub.SearchBatch(search_pb2.SearchBatchRequest(
            collection=catalogue, queries=queries, k=5, space=space, filter='metadata["source"] == "crawl"')).results
        singles = [
            stub.Search(search_pb2.SearchRequest(collection=catalogue, k=5, space=space, filter='metadata["source"] == "crawl"', **{
                query.WhichOneof("query"): getattr(query, query.WhichOneof("query"))})).hits
            for query in queries
        ]
        assert [[(h.id, h.distance) for h in result.hits] for result in batch] == [[(h.id, h.distance) for h in hits] for hits in singles]


def test_upsert_replaces_by_id_and_delete_by_filter(stub, mnist):
    stub.CreateCollection(search_pb2.CreateCollectionRequest(name="upserts"))
    first = stub.UpsertItems(search_pb2.UpsertItemsRequest(collection="upserts", items=[item(i, mnist) for i in range(4)]))
    assert (first.added, first.replaced) == (4, 0)
    moved = item(7, mnist)
    moved.id = "item-0"
    again = stub.UpsertItems(search_pb2.UpsertItemsRequest(collection="upserts", items=[moved, item(4, mnist)]))
    assert (again.added, again.replaced) == (1, 1)
    got = stub.GetItems(search_pb2.GetItemsRequest(collection="upserts", ids=["item-0"])).items[0]
    assert got.label == mnist.test.labels[7]
    hit = stub.Search(search_pb2.SearchRequest(collection="upserts", image=image(mnist.test.images[7]), k=1)).hits[0]
    assert hit.id == "item-0" and hit.distance < 1e-6  # the index holds the new code, not the old one
    with pytest.raises(grpc.RpcError) as raised:
        stub.AddItems(search_pb2.AddItemsRequest(collection="upserts", items=[item(1, mnist)]))
    assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
    deleted = stub.DeleteItems(search_pb2.DeleteItemsRequest(collection="upserts", filter='metadata["source"] == "upload"'))
    assert deleted.deleted == 3  # item-1, item-3 and item-0 (now item 7's, an upload)
    assert stub.GetIndexStats(search_pb2.GetIndexStatsRequest(collection="upserts")).items == 2
    stub.DropCollection(search_pb2.DropCollectionRequest(name="upserts"))


def test_concurrent_writers_lose_nothing_and_reads_see_acknowledged_writes(stub, mnist):
    stub.CreateCollection(search_pb2.CreateCollectionRequest(name="busy"))
    failures = []

    def writer(w: int):
        try:
            for start in range(0, 40, 8):
                batch = [item(w * 40 + i, mnist) for i in range(start, start + 8)]
                stub.AddItems(search_pb2.AddItemsRequest(collection="busy", items=batch))
                got = stub.GetItems(search_pb2.GetItemsRequest(collection="busy", ids=[i.id for i in batch]))
                assert not got.missing  # acknowledged: visible to the next read
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(error)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
    assert stub.GetIndexStats(search_pb2.GetIndexStatsRequest(collection="busy")).items == 160
    stub.DropCollection(search_pb2.DropCollectionRequest(name="busy"))


def leave_a_half_made_collection(settings: Settings) -> str:
    """What a creation cut short by a stop leaves: a directory, or a Milvus collection, no name points to
    (and for the embedded backend, the temporary file of an alias write cut short too)."""
    if settings.index_backend == "embedded":
        (settings.data_dir / "collections" / "half-made").mkdir()
        (settings.data_dir / "collections" / f".aliases.json{PARTIAL}a1b2c3d4").write_text('{"half-made": "half-made"')
        return "half-made"
    with milvus_client(settings) as client:
        client.create_collection("ls_half_made_000000000000", dimension=2)
    return "ls_half_made_000000000000"


def test_collections_survive_a_restart(tmp_path, backend, mnist):
    gateway = RunningGateway(data_dir=tmp_path, gallery="none", index_backend=backend).start()
    try:
        with gateway.channel() as channel:
            stub = search_pb2_grpc.SearchStub(channel)
            stub.CreateCollection(search_pb2.CreateCollectionRequest(name="kept", keep_images=True))
            stub.AddItems(search_pb2.AddItemsRequest(collection="kept", items=[item(i, mnist) for i in range(3)]))
    finally:
        gateway.stop()
    half_made = leave_a_half_made_collection(gateway.settings)
    gateway = RunningGateway(data_dir=tmp_path, gallery="none", index_backend=backend).start()
    try:
        with gateway.channel() as channel:
            stub = search_pb2_grpc.SearchStub(channel)
            names = [c.collection for c in stub.ListCollections(search_pb2.ListCollectionsRequest()).collections]
            assert names == ["default", "kept"]
            stats = stub.GetIndexStats(search_pb2.GetIndexStatsRequest(collection="kept"))
            assert (stats.items, stats.keep_images) == (3, True)
            got = stub.GetItems(search_pb2.GetItemsRequest(collection="kept", ids=["item-2"], with_images=True)).items[0]
            assert got.image == item(2, mnist).image
        assert half_made not in stored_collections(gateway.settings)
        assert not list((tmp_path / "collections").glob(f".*{PARTIAL}*"))
    finally:
        gateway.stop()


def test_reindex_switches_encoder_versions_while_searches_and_writes_go_on(stub, mnist):
    stub.CreateCollection(search_pb2.CreateCollectionRequest(name="moving", keep_images=True, model=common_pb2.ModelRef(name="autoencoder", version=1)))
    for start in range(0, 600, 100):
        stub.AddItems(search_pb2.AddItemsRequest(collection="moving", items=[item(i, mnist) for i in range(start, start + 100)]))
    failures, searched, stop = [], [], threading.Event()

    def search():
        while not stop.is_set():
            try:
                hits = stub.Search(search_pb2.SearchRequest(collection="moving", image=image(mnist.test.images[5]), k=1)).hits
                assert hits[0].id == "item-5" and hits[0].distance < 1e-6  # old or new codes, never a mix
                searched.append(1)
            except Exception as error:  # noqa: BLE001 - reported below
                failures.append(error)

    searcher = threading.Thread(target=search)
    searcher.start()
    started = stub.ReindexCollection(search_pb2.ReindexCollectionRequest(collection="moving"))
    assert started.reindex.model.version > 1 and started.reindex.total == 600 and started.model.version == 1
    for i in range(600, 640, 8):  # writes while it runs
        stub.AddItems(search_pb2.AddItemsRequest(collection="moving", items=[item(j, mnist) for j in range(i, i + 8)]))
    stub.DeleteItems(search_pb2.DeleteItemsRequest(collection="moving", ids=["item-0", "item-600"]))
    deadline = time.monotonic() + 60
    while (stats := stub.GetIndexStats(search_pb2.GetIndexStatsRequest(collection="moving"))).HasField("reindex"):
        assert not stats.reindex.error and time.monotonic() < deadline
        time.sleep(0.1)
    stop.set()
    searcher.join()
    assert not failures and searched
    assert stats.model.version == started.reindex.model.version and stats.items == 638
    got = stub.GetItems(search_pb2.GetItemsRequest(collection="moving", ids=["item-639", "item-0", "item-600"]))
    assert [i.id for i in got.items] == ["item-639"] and sorted(got.missing) == ["item-0", "item-600"]
    hit = stub.Search(search_pb2.SearchRequest(collection="moving", image=image(mnist.test.images[639]), k=1)).hits[0]
    assert hit.id == "item-639" and hit.distance < 1e-6  # encoded by the new version, like the query
    with pytest.raises(grpc.RpcError) as raised:
        stub.ReindexCollection(search_pb2.ReindexCollectionRequest())  # the default collection keeps no images
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    stub.DropCollection(search_pb2.DropCollectionRequest(name="moving"))


def test_a_reindex_cut_short_by_a_drop_leaves_nothing_behind(stub, gateway, backend, mnist):
    stub.CreateCollection(search_pb2.CreateCollectionRequest(name="short-lived", keep_images=True, model=common_pb2.ModelRef(name="autoencoder", version=1)))
    stub.AddItems(search_pb2.AddItemsRequest(collection="short-lived", items=[item(i, mnist) for i in range(200)]))
    stub.ReindexCollection(search_pb2.ReindexCollectionRequest(collection="short-lived"))
    stub.DropCollection(search_pb2.DropCollectionRequest(name="short-lived"))
    created = stub.CreateCollection(search_pb2.CreateCollectionRequest(name="short-lived"))
    assert not created.HasField("reindex")  # whatever became of the old one's reindex
    time.sleep(1)
    prefix = "short-lived-" if backend == "embedded" else "ls_short_lived_"
    assert len([s for s in stored_collections(gateway.settings) if s.startswith(prefix)]) == 1  # the new collection's only
    stub.DropCollection(search_pb2.DropCollectionRequest(name="short-lived"))


# --- Milvus only -------------------------------------------------------------------------------------
BINDING = Binding("autoencoder", 1, 4, 12)  # 12 bits: 2 bytes, the last 4 bits unused


def new_item(item_id: str, label: int | None = None, metadata: dict | None = None, image: bytes | None = None) -> NewItem:
    rng = np.random.default_rng(len(item_id) + sum(map(ord, item_id)))
    return NewItem(item_id, rng.normal(size=4).astype(np.float32), rng.integers(0, 256, 2, dtype=np.uint8), label, metadata or {}, image)


def test_a_milvus_lite_file_opens_in_one_gateway_at_a_time(tmp_path):
    uri = str(tmp_path / "once.db")
    first = MilvusCollections(uri)
    first.open(BINDING)
    try:
        with pytest.raises(IndexLocked):  # `serve` exits 2 on it, as for the embedded index
            MilvusCollections(uri).open(BINDING)
        assert len(first.get("default")) == 0  # the refused opening took nothing from the first
    finally:
        first.close()
    again = MilvusCollections(uri)
    again.open(BINDING)
    again.close()


def test_a_milvus_collection_keeps_its_binding_options_and_items_over_a_restart(tmp_path):
    uri, binding = str(tmp_path / "kept.db"), Binding("autoencoder", 2, 4, 12)
    options = IndexOptions(keep_images=True, kind="ivf", nlist=2, nprobe=1)
    items = [new_item("b", 3, {"k": "v"}, b"image of b"), new_item("a", None, {}, bytes(range(256))), new_item("é 中", -7, {"q\"k": "x'y"}, b"")]
    collections = MilvusCollections(uri)
    collections.open(BINDING)
    try:
        collections.create("kept", binding, options).add(items, mark="seeded")
    finally:
        collections.close()
    reopened = MilvusCollections(uri)
    reopened.open(Binding("other", 9, 8, 8))  # the default collection exists: it keeps its own binding
    try:
        assert reopened.names() == ["default", "kept"] and reopened.get("default").binding == BINDING
        index = reopened.get("kept")
        assert (index.binding, index.options) == (binding, options)
        assert index.is_marked("seeded") and not index.is_marked("other")
        stored = index.page("", 10)
        assert [s.id for s in stored] == ["b", "a", "é 中"]  # the order they were stored in
        for got, sent in zip(stored, items):
            assert (got.label, got.metadata, got.image or b"") == (sent.label, sent.metadata, sent.image)
            assert np.array_equal(got.code, sent.code) and np.array_equal(got.bits, sent.bits)
        assert [s.id for s in index.page(stored[0].cursor, 10)] == ["a", "é 中"]
    finally:
        reopened.close()


def test_milvus_refuses_what_it_cannot_hold(tmp_path):
    collections = MilvusCollections(str(tmp_path / "limits.db"))
    collections.open(BINDING)
    try:
        kept = collections.create("kept", BINDING, IndexOptions(keep_images=True))
        with pytest.raises(ResourceExhausted) as raised:  # a VARCHAR holds 64 KiB of base64
            kept.add([new_item("small", image=b"x"), new_item("big", image=b"x" * (MAX_IMAGE_BYTES + 1))])
        assert raised.value.field == "items[1].image" and kept.ids() == set()
        with pytest.raises(InvalidArgument) as raised:  # a Milvus filter cannot name it
            kept.add([new_item("line\nbreak")])
        assert raised.value.field == "items[0].id"
        assert kept.get_items(["line\nbreak"]) == []
        with pytest.raises(NotFound):
            kept.delete(["line\nbreak"])
        with pytest.raises(FailedPrecondition):
            collections.create("graph", BINDING, IndexOptions(kind="hnsw", m=16, ef_search=64))
        assert collections.names() == ["default", "kept"]
    finally:
        collections.close()


def test_two_gateways_on_one_milvus_server_see_each_others_collections_and_switches(milvus_server):
    first, second = MilvusCollections(milvus_server), MilvusCollections(milvus_server)
    first.open(BINDING)
    second.open(BINDING)  # the catalog and the default collection exist: it finds them
    try:
        first.create("shared", BINDING, IndexOptions()).add([new_item("a", 1), new_item("b", 2)])
        assert second.names() == ["default", "shared"]
        seen = second.get("shared")
        assert seen.ids() == {"a", "b"}
        seen.add([new_item("c", 1, {"from": "second"})])
        assert [item.metadata for item in first.get("shared").get_items(["c"])] == [{"from": "second"}]

        collection, rebuilt = first.build("shared", BINDING, IndexOptions())  # as a reindex does
        rebuilt.add([new_item("a", 1), new_item("b", 2), new_item("c", 1), new_item("d", 3)])
        first.switch("shared", collection, rebuilt)
        with pytest.raises(NotFound):  # the second gateway's handle is of the dropped collection
            seen.ids()
        assert second.get("shared").ids() == {"a", "b", "c", "d"}
        hits = second.get("shared").search(new_item("d").code[None], False, 1, [None])
        assert [hit.id for hit in hits[0]] == ["d"]

        first.drop("shared")
        with pytest.raises(NotFound):
            second.get("shared").ids()
        with pytest.raises(NotFound):
            second.get("shared")
    finally:
        first.close()
        second.close()


def test_a_collection_can_use_the_deep_autoencoders_codes(stub, mnist):
    created = stub.CreateCollection(search_pb2.CreateCollectionRequest(name="deep", model=common_pb2.ModelRef(name="deep_autoencoder")))
    assert created.model.name == "deep_autoencoder" and created.code_dim == 30
    stub.AddItems(search_pb2.AddItemsRequest(collection="deep", items=[item(i, mnist) for i in range(60)]))
    hits = stub.Search(search_pb2.SearchRequest(collection="deep", id="item-0", k=5)).hits
    assert len(hits) == 5 and sum(hit.label == mnist.test.labels[0] for hit in hits) >= 3


def test_a_collection_can_search_the_binary_autoencoders_256_bit_codes_by_hamming_distance(stub, mnist):
    created = stub.CreateCollection(search_pb2.CreateCollectionRequest(name="bits", model=common_pb2.ModelRef(name="binary_autoencoder")))
    assert created.model.name == "binary_autoencoder" and created.num_bits == 256
    stub.AddItems(search_pb2.AddItemsRequest(collection="bits", items=[item(i, mnist) for i in range(60)]))
    hits = stub.Search(search_pb2.SearchRequest(collection="bits", id="item-0", k=5, space=search_pb2.SPACE_HASH)).hits
    assert len(hits) == 5 and sum(hit.label == mnist.test.labels[0] for hit in hits) >= 3
