"""The code index: exact and Hamming search, all-or-nothing writes, persistence, crash safety, one process."""
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from serving.errors import AlreadyExists, NotFound
from serving.filters import parse
from serving.index import TRAIN_PER_LIST, Binding, CodeIndex, IndexLocked, IndexOptions, NewItem

BINDING = Binding("autoencoder", 1, code_dim=4, num_bits=12)


def item(i: int, label=None) -> NewItem:
    rng = np.random.default_rng(i)
    bits = np.packbits(rng.random(BINDING.num_bits) > 0.5)
    return NewItem(f"item-{i}", rng.random(BINDING.code_dim, dtype=np.float32), bits, label, {"n": str(i)})


def nearest(index: CodeIndex, query: np.ndarray, k: int, hashed: bool = False, exclude_id: str | None = None, where=None):
    return index.search(query[None], hashed, k, [exclude_id], where)[0]


def test_exact_search_matches_brute_force(tmp_path):
    index = CodeIndex(tmp_path, BINDING)
    items = [item(i, i % 3) for i in range(50)]
    index.add(items)
    query = np.full(4, 0.5, np.float32)
    hits = nearest(index, query, 5)
    distances = sorted(((it.code - query) ** 2).sum() for it in items)[:5]
    np.testing.assert_allclose([h.distance for h in hits], distances, rtol=1e-5)
    assert hits[0].metadata["n"] == hits[0].id.split("-")[1]


def test_hamming_search_counts_differing_bits_and_can_leave_out_the_query(tmp_path):
    index = CodeIndex(tmp_path, BINDING)
    items = [item(i) for i in range(30)]
    index.add(items)
    bits = index.get_items(["item-7"])[0].bits
    hits = nearest(index, bits, 3, hashed=True, exclude_id="item-7")
    assert "item-7" not in [h.id for h in hits]
    unpacked = {it.id: np.unpackbits(it.bits)[: BINDING.num_bits] for it in items}
    for hit in hits:
        assert hit.distance == (unpacked[hit.id] != unpacked["item-7"]).sum()


def test_writes_are_all_or_nothing(tmp_path):
    index = CodeIndex(tmp_path, BINDING)
    index.add([item(1), item(2)])
    with pytest.raises(AlreadyExists, match=r"items\[1\]"):
        index.add([item(3), item(2)])
    with pytest.raises(NotFound, match=r"ids\[1\]"):
        index.delete(["item-1", "item-9"])
    assert len(index) == 2
    assert sorted(h.id for h in nearest(index, item(3).code, 10)) == ["item-1", "item-2"]
    assert [i.id for i in index.get_items(["item-1", "item-3"])] == ["item-1"]


IVF = IndexOptions(kind="ivf", nlist=8, nprobe=2)


def clustered(count: int, seed: int = 0) -> list[NewItem]:
    """Items in 8 tight clusters of 16-d codes, labelled by cluster: what IVF is for."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((8, 16)).astype(np.float32) * 5
    binding = Binding("autoencoder", 1, 16, 16)
    codes = centres[np.arange(count) % 8] + rng.standard_normal((count, 16)).astype(np.float32) * 0.3
    return binding, [NewItem(f"c-{i}", codes[i], np.packbits(codes[i] > 0), i % 8) for i in range(count)]


def test_an_ivf_collection_is_exact_until_trained_then_close_to_exact(tmp_path):
    binding, items = clustered(TRAIN_PER_LIST * 8 + 80)
    index = CodeIndex(tmp_path / "ivf", binding, IVF)
    exact = CodeIndex(tmp_path / "exact", binding)
    exact.add(items)
    index.add(items[: TRAIN_PER_LIST * 8 - 1])
    assert not index.approximate
    index.add(items[TRAIN_PER_LIST * 8 - 1 :])  # reaches 30 x nlist: trains
    assert index.approximate and len(index) == len(items)
    queries = np.stack([it.code for it in items[:40]])
    for hashed, vectors in ((False, queries), (True, np.stack([it.bits for it in items[:40]]))):
        approximate = index.search(vectors, hashed, 10, [None] * 40)
        truth = exact.search(vectors, hashed, 10, [None] * 40)
        recall = np.mean([len({h.id for h in a} & {h.id for h in t}) / 10 for a, t in zip(approximate, truth)])
        assert recall >= (0.9 if not hashed else 0.5)  # Hamming ties make the binary top 10 ambiguous
    index.close()
    reopened = CodeIndex(tmp_path / "ivf", None)
    assert reopened.approximate and reopened.options == IVF


HNSW = IndexOptions(kind="hnsw", m=8, ef_search=16)


def test_an_hnsw_collection_is_close_to_exact_and_leaves_deleted_items_out_across_restarts(tmp_path):
    binding, items = clustered(400)
    index = CodeIndex(tmp_path / "hnsw", binding, HNSW)
    exact = CodeIndex(tmp_path / "exact", binding)
    index.add(items)
    exact.add(items)
    assert index.approximate
    queries = np.stack([it.code for it in items[:40]])
    found, truth = index.search(queries, False, 10, [None] * 40), exact.search(queries, False, 10, [None] * 40)
    assert np.mean([len({h.id for h in a} & {h.id for h in t}) / 10 for a, t in zip(found, truth)]) >= 0.9
    gone = [it.id for it in items[:30]]
    index.delete(gone)  # tombstones in the graphs
    for hashed, vectors in ((False, queries), (True, np.stack([it.bits for it in items[:40]]))):
        assert not {h.id for hits in index.search(vectors, hashed, 10, [None] * 40) for h in hits} & set(gone)
    index.close()
    reopened = CodeIndex(tmp_path / "hnsw", None)  # 30 of 400 deleted: under TOMBSTONE_SHARE, the saved graphs stay
    assert len(reopened) == 370 and reopened.options == HNSW
    assert not {h.id for hits in reopened.search(queries, False, 10, [None] * 40) for h in hits} & set(gone)
    reopened.delete([it.id for it in items[30:80]])  # 80 of 400 now: rebuilt at the next open
    reopened.close()
    rebuilt = CodeIndex(tmp_path / "hnsw", None)
    assert len(rebuilt) == 320 and rebuilt.search(items[100].code[None], False, 1, [None])[0][0].id == items[100].id


def test_filtered_hnsw_search_returns_k_hits_when_k_items_match(tmp_path):
    binding, items = clustered(400)
    index = CodeIndex(tmp_path, binding, HNSW)
    index.add(items)
    far = items[1].code  # cluster 1: the graph search from here rarely reaches cluster 5 with ef_search 16
    hits = index.search(far[None], False, 12, [None], parse("label == 5", 100, 10, 5))[0]
    assert len(hits) == 12 and all(h.label == 5 for h in hits)
    truth = CodeIndex(tmp_path / "exact", binding)
    truth.add(items)
    expected = truth.search(far[None], False, 12, [None], parse("label == 5", 100, 10, 5))[0]
    assert [h.id for h in hits] == [h.id for h in expected]


def test_filtered_ivf_search_returns_k_hits_when_k_items_match(tmp_path):
    binding, items = clustered(TRAIN_PER_LIST * 8)
    index = CodeIndex(tmp_path, binding, IVF)
    index.add(items)
    assert index.approximate
    far = items[1].code  # a query in cluster 1: cluster 5's items lie in lists nprobe=2 does not reach
    hits = index.search(far[None], False, 12, [None], parse("label == 5", 100, 10, 5))[0]
    assert len(hits) == 12 and all(h.label == 5 for h in hits)
    deleted = index.delete_where(parse("label == 5", 100, 10, 5))
    assert deleted == TRAIN_PER_LIST and index.search(far[None], False, 12, [None], parse("label == 5", 100, 10, 5)) == [[]]
    assert len(index) == TRAIN_PER_LIST * 7


def test_reopening_keeps_everything_with_or_without_a_clean_close(tmp_path):
    index = CodeIndex(tmp_path, BINDING)
    index.add([item(i) for i in range(20)])
    index.delete(["item-3"])
    index.close()
    reopened = CodeIndex(tmp_path, Binding("other", 9, 4, 12))  # an existing index keeps its binding
    assert reopened.binding == BINDING and len(reopened) == 19
    reopened.add([item(20)])  # the FAISS snapshot is now stale: the next open rebuilds from SQLite
    del reopened
    again = CodeIndex(tmp_path, BINDING)
    assert len(again) == 20
    assert nearest(again, item(20).code, 1)[0].id == "item-20"


def test_an_index_made_before_collections_opens_and_gains_the_image_column(tmp_path):
    old = sqlite3.connect(tmp_path / "items.sqlite")
    old.executescript("""
        CREATE TABLE items (row INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, label INTEGER,
                            metadata TEXT NOT NULL, code BLOB NOT NULL, bits BLOB NOT NULL);
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """)
    old.executemany("INSERT INTO meta VALUES (?, ?)", [("binding", json.dumps(BINDING.__dict__)), ("writes", "1")])
    stored = item(1)
    old.execute("INSERT INTO items (id, label, metadata, code, bits) VALUES (?, ?, ?, ?, ?)",
                (stored.id, 1, "{}", stored.code.tobytes(), stored.bits.tobytes()))
    old.commit()
    old.close()
    index = CodeIndex(tmp_path, None)
    assert index.binding == BINDING and not index.keep_images and len(index) == 1
    index.add([item(2)])
    assert [i.id for i in index.get_items(["item-1", "item-2"])] == ["item-1", "item-2"]


WRITER = textwrap.dedent("""
    import sys, numpy as np
    from pathlib import Path
    from serving.index import Binding, CodeIndex, IndexLocked, NewItem
    index = CodeIndex(Path(sys.argv[1]), Binding("autoencoder", 1, 4, 12))
    for i in range(100000):
        batch = [NewItem(f"{i}-{j}", np.random.rand(4).astype(np.float32), np.zeros(2, np.uint8)) for j in range(50)]
        index.add(batch)
        print(i, flush=True)
""")


def test_a_killed_writer_loses_nothing_acknowledged_and_leaves_a_readable_index(tmp_path):
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    acknowledged = [int(process.stdout.readline()) for _ in range(20)]
    process.send_signal(signal.SIGKILL)  # mid-write: it is adding batch 21 or later
    process.wait()
    index = CodeIndex(tmp_path, BINDING)
    stored = len(index)
    assert stored % 50 == 0 and stored >= 50 * len(acknowledged)  # whole batches only
    for batch in acknowledged:
        assert index.get_items([f"{batch}-49"])
    assert len(nearest(index, np.zeros(4, np.float32), stored)) == stored


OPENER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from serving.index import Binding, CodeIndex
    CodeIndex(Path(sys.argv[1]), Binding("autoencoder", 1, 4, 12)).close()
""")


def test_a_second_process_is_refused_while_the_index_is_open_and_names_the_holder(tmp_path):
    index = CodeIndex(tmp_path, BINDING)
    refused = subprocess.run([sys.executable, "-c", OPENER, str(tmp_path)], capture_output=True, text=True)
    assert refused.returncode != 0
    assert f"IndexLocked: the index at {tmp_path} is in use by process {os.getpid()} on {socket.gethostname()}" in refused.stderr
    with pytest.raises(IndexLocked, match="one gateway per data directory"):
        CodeIndex(tmp_path, BINDING)  # a second open in the same process too
    index.close()
    subprocess.run([sys.executable, "-c", OPENER, str(tmp_path)], check=True)


def test_a_repeated_filter_sees_every_write_made_since(tmp_path):
    index = CodeIndex(tmp_path, BINDING)
    index.add([item(i, i % 2) for i in range(10)])
    odd = parse("label == 1", 100, 10, 5)
    query = np.zeros(4, np.float32)
    assert len(nearest(index, query, 20, where=odd)) == 5
    index.add([item(11, 1)])  # the filter's kept rows must not hide it
    assert "item-11" in {h.id for h in nearest(index, query, 20, where=odd)}
    index.delete(["item-1"])
    assert "item-1" not in {h.id for h in nearest(index, query, 20, where=odd)}
    assert index.delete_where(odd) == 5 and nearest(index, query, 20, where=odd) == []


def test_filters_select_the_stored_items_through_churn_and_a_reopen(tmp_path):
    # enough deletes that the item table drops its stale postings; then reopened, it is read from SQLite
    index = CodeIndex(tmp_path, BINDING)
    stored = {}  # id -> (label, metadata)
    for start in range(0, 3000, 500):
        batch = [NewItem(f"item-{i}", item(i).code, item(i).bits, i % 5 if i % 7 else None, {"shard": str(i % 4)} if i % 3 else {}) for i in range(start, start + 500)]
        index.add(batch)
        stored.update({it.id: (it.label, it.metadata) for it in batch})
    index.delete([f"item-{i}" for i in range(0, 3000, 2)] + [f"item-{i}" for i in range(1, 1000, 2)])
    index.add([NewItem(f"item-{i}", item(i).code, item(i).bits, 9, {"shard": "new"}) for i in range(1001, 1101, 2)], replace=True)
    for i in range(0, 3000, 2):
        del stored[f"item-{i}"]
    for i in range(1, 1000, 2):
        del stored[f"item-{i}"]
    stored.update({f"item-{i}": (9, {"shard": "new"}) for i in range(1001, 1101, 2)})
    assert index.delete_where(parse('metadata["shard"] == "3" and label == 1', 100, 10, 5)) > 0
    stored = {k: v for k, v in stored.items() if not (v[1].get("shard") == "3" and v[0] == 1)}

    filters = {  # text -> what it selects, by its definition
        "label == 9": lambda label, metadata: label == 9,
        'label in [1, 2] and metadata["shard"] != "0"': lambda label, metadata: label in (1, 2) and metadata.get("shard", "0") != "0",
        'not (metadata["shard"] in ["1", "new"])': lambda label, metadata: "shard" in metadata and metadata["shard"] not in ("1", "new"),
        "label != 4 or label == 4": lambda label, metadata: label is not None,
    }
    for reopened in (False, True):
        if reopened:
            index.close()
            index = CodeIndex(tmp_path, None)
        for text, selects in filters.items():
            where = parse(text, 200, 10, 5)
            expected = {item_id for item_id, (label, metadata) in stored.items() if selects(label, metadata)}
            hits = nearest(index, np.zeros(4, np.float32), len(stored), where=where)
            assert {h.id for h in hits} == expected, (text, reopened)
            assert all(h.label == stored[h.id][0] and h.metadata == stored[h.id][1] for h in hits)
            listed, token = [], ""
            while page := index.page(token, 100, where):
                listed += [it.id for it in page]
                token = page[-1].cursor
            assert sorted(listed) == sorted(expected) and len(listed) == len(expected)
    index.close()
