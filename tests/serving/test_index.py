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
from serving.index import Binding, CodeIndex, IndexLocked, NewItem

BINDING = Binding("autoencoder", 1, code_dim=4, num_bits=12)


def item(i: int, label=None) -> NewItem:
    rng = np.random.default_rng(i)
    bits = np.packbits(rng.random(BINDING.num_bits) > 0.5)
    return NewItem(f"item-{i}", rng.random(BINDING.code_dim, dtype=np.float32), bits, label, {"n": str(i)})


def nearest(index: CodeIndex, query: np.ndarray, k: int, hashed: bool = False, exclude_row: int | None = None):
    return index.search(query[None], hashed, k, [exclude_row])[0]


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
    row, _, bits = index.get("item-7")
    hits = nearest(index, bits, 3, hashed=True, exclude_row=row)
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
    assert [h.id for h in nearest(index, item(3).code, 10)] and index.get("item-1")
    with pytest.raises(NotFound):
        index.get("item-3")


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
        index.get(f"{batch}-49")
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
