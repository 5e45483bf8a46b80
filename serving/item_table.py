"""The stored items' ids, labels and metadata in memory, by SQLite row, beside FAISS: a search reads its
hits from here and a filter selects its rows here, without a query to SQLite, which stays the durable
record this table is loaded from.

Labels are one int64 column (NO_LABEL for none). Metadata is kept as its JSON text, and for filters as
postings: for each key, the rows that have it and, for each of its values, the rows that hold it. Rows are
never reused (SQLite's AUTOINCREMENT), so a removed row only leaves `live`; its stale postings are
dropped once they outnumber the live items.
"""
import json
from array import array

import numpy as np

from serving.filters import NO_LABEL, And, Comparison, Filter, Label, Not, Or


class ItemTable:
    def __init__(self):
        self._ids = np.empty(0, object)
        self._labels = np.empty(0, np.int64)
        self._metadata = np.empty(0, object)  # JSON text, or None for {}
        self._live = np.zeros(0, bool)
        self._count = 0  # live rows
        self._removed = 0  # rows removed since the postings were last compacted
        self._keyed: dict[str, array] = {}  # key -> rows that have it
        self._valued: dict[str, dict[str, array]] = {}  # key -> value -> rows that hold it
        self._texts: dict[str, str] = {}  # one copy of each distinct metadata text

    def __len__(self) -> int:
        return self._count

    def add(self, rows: list[int], ids: list[str], labels: list[int | None], metadata: list[str]) -> None:
        """Items stored at `rows`, each `metadata` the JSON text of its object as SQLite holds it."""
        self._grow(max(rows, default=0) + 1)
        for row, item_id, label, text in zip(rows, ids, labels, metadata):
            self._ids[row], self._labels[row], self._live[row] = item_id, NO_LABEL if label is None else label, True
            values = json.loads(text)
            if values:
                self._metadata[row] = self._texts.setdefault(text, text)
                for key, value in values.items():
                    self._keyed.setdefault(key, array("q")).append(row)
                    self._valued.setdefault(key, {}).setdefault(value, array("q")).append(row)
        self._count += len(rows)

    def remove(self, rows: list[int]) -> None:
        rows = np.asarray(rows, np.int64)
        self._live[rows] = False
        self._ids[rows] = self._metadata[rows] = None
        self._count -= len(rows)
        self._removed += len(rows)
        if self._removed > max(self._count, 1024):
            self._compact()

    def hits(self, rows: np.ndarray) -> list[tuple[str, int | None, dict[str, str]]]:
        """(id, label, metadata) of each of `rows` (live ones); one metadata dict for each distinct text."""
        parsed: dict[str, dict[str, str]] = {}
        return [
            (item_id, None if label == NO_LABEL else label, (parsed.get(text) or parsed.setdefault(text, json.loads(text))) if text else {})
            for item_id, label, text in zip(self._ids[rows].tolist(), self._labels[rows].tolist(), self._metadata[rows].tolist())
        ]

    def select(self, where: Filter) -> np.ndarray:
        """A mask over rows: the live items `where` is true of, in three-valued logic (filters.py)."""
        true, _ = self._truth(where)
        return true & self._live

    def _truth(self, node: Filter) -> tuple[np.ndarray, np.ndarray]:
        """(where `node` is true, where it is false); both unset where it is unknown (a missing label or key)."""
        if isinstance(node, Not):
            true, false = self._truth(node.operand)
            return false, true
        if isinstance(node, (And, Or)):
            results = [self._truth(operand) for operand in node.operands]
            trues, falses = np.stack([t for t, _ in results]), np.stack([f for _, f in results])
            if isinstance(node, And):
                return trues.all(0), falses.any(0)
            return trues.any(0), falses.all(0)
        return self._compare(node)

    def _compare(self, node: Comparison) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(node.field, Label):
            known = self._labels != NO_LABEL
            equal = known & np.isin(self._labels, np.asarray(node.values, np.int64))  # NO_LABEL is no value
        else:
            known, equal = self._mask([self._keyed.get(node.field.key, array("q"))]), self._mask(
                [self._valued.get(node.field.key, {}).get(value, array("q")) for value in node.values]
            )
        if node.op in ("!=", "not in"):
            return known & ~equal, equal
        return equal, known & ~equal

    def _mask(self, postings: list[array]) -> np.ndarray:
        mask = np.zeros(len(self._live), bool)
        for rows in postings:
            mask[np.frombuffer(rows, np.int64)] = True
        return mask

    def _grow(self, size: int) -> None:
        if size <= len(self._live):
            return
        capacity = max(size, 2 * len(self._live), 1024)
        self._ids, self._metadata = (np.concatenate([column, np.full(capacity - len(column), None, object)]) for column in (self._ids, self._metadata))
        self._labels = np.concatenate([self._labels, np.full(capacity - len(self._labels), NO_LABEL, np.int64)])
        self._live = np.concatenate([self._live, np.zeros(capacity - len(self._live), bool)])

    def _compact(self) -> None:
        def live(rows: array) -> array:
            kept = np.frombuffer(rows, np.int64)
            return array("q", kept[self._live[kept]].tobytes())

        self._keyed = {key: live(rows) for key, rows in self._keyed.items()}
        self._valued = {key: {value: live(rows) for value, rows in values.items()} for key, values in self._valued.items()}
        self._keyed = {key: rows for key, rows in self._keyed.items() if rows}
        self._valued = {key: {value: rows for value, rows in values.items() if rows} for key, values in self._valued.items() if key in self._keyed}
        self._texts = {text: text for text in self._metadata[self._live] if text}
        self._removed = 0
