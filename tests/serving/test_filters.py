"""Filters: what any text parses to, the rows the item table selects against three-valued logic evaluated
here item by item, the limits, the messages, and the Milvus text."""
import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from serving.errors import InvalidArgument, ResourceExhausted
from serving.filters import NO_LABEL, And, Comparison, Label, Metadata, Not, Or, parse, to_milvus
from serving.index import Binding, NewItem
from serving.item_table import ItemTable
from serving.milvus_index import MilvusCollections

MAX_BYTES, MAX_VALUES, MAX_DEPTH = 4096, 1000, 32  # the settings' defaults
QUICK = settings(max_examples=300, deadline=None, derandomize=True)

QUOTED_KEY = "it's \"quoted\""
ITEMS = [  # (label, metadata): labels missing, keys missing, keys with quotes, dots and brackets
    (0, {"source": "upload", "split": "train"}),
    (1, {"source": "crawl"}),
    (2, {}),
    (None, {"source": "upload"}),
    (None, {}),
    (3, {QUOTED_KEY: "yes", "a.b[0]": "dots", "source": "Upload"}),
    (-5, {"source": "", "split": "test"}),
    (2**63 - 1, {"split": "train", "a.b[0]": "x"}),
    (-(2**63), {"source": "crawl", "split": "test", QUOTED_KEY: "no"}),
    (1, {"source": "upload\nnext", "split": "test"}),
    (None, {"split": "train", "source": "crawl"}),
    (7, {"source": "'); DROP TABLE items; --"}),
]
LABELS = [0, 1, 2, 3, -5, 7, 42, 2**63 - 1, -(2**63)]
KEYS = ["source", "split", QUOTED_KEY, "a.b[0]", "missing", ""]
VALUES = ["upload", "crawl", "Upload", "", "train", "test", "yes", "upload\nnext", "'); DROP TABLE items; --"]


def parse_default(text: str):
    return parse(text, MAX_BYTES, MAX_VALUES, MAX_DEPTH)


@pytest.fixture(scope="module")
def table():
    table = ItemTable()
    table.add([0, 99], ["removed-0", "removed-99"], [3, 3], [json.dumps({"source": "upload"})] * 2)
    table.remove([0, 99])  # rows the table no longer holds select nothing
    rows = list(range(1, len(ITEMS) + 1))
    table.add(rows, [f"item-{row}" for row in rows], [label for label, _ in ITEMS], [json.dumps(metadata) for _, metadata in ITEMS])
    return table


def truth(node, label, metadata) -> bool | None:
    """Three-valued logic, straight from the definition: None (unknown) for a comparison with a missing
    label or key; `not` keeps it unknown, `and` is false with any false side, `or` true with any true side."""
    if isinstance(node, Comparison):
        value = label if isinstance(node.field, Label) else metadata.get(node.field.key)
        if value is None:
            return None
        return (value in node.values) == (node.op in ("==", "in"))
    if isinstance(node, Not):
        inner = truth(node.operand, label, metadata)
        return None if inner is None else not inner
    results = [truth(operand, label, metadata) for operand in node.operands]
    if isinstance(node, And):
        return False if False in results else None if None in results else True
    return True if True in results else None if None in results else False


def selected_by_table(table, parsed) -> set[int]:
    return {int(row) - 1 for row in np.flatnonzero(table.select(parsed))}


def selected_by_definition(parsed) -> set[int]:
    return {row for row, (label, metadata) in enumerate(ITEMS) if truth(parsed, label, metadata) is True}


def literal(text: str, quote: str = '"') -> str:
    return quote + text.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


def clause_text(field: str, op: str, values: list[str]) -> str:
    return f"{field} {op} {values[0]}" if op in ("==", "!=") else f"{field} {op} [{', '.join(values)}]"


def filter_texts(values: list[str]):
    """Filter texts from the grammar over the labels, keys and `values` above, any quoting."""
    quotes = st.sampled_from(['"', "'"])
    label_clause = st.builds(clause_text, st.just("label"), st.sampled_from(["==", "!=", "in", "not in"]),
                             st.lists(st.sampled_from(LABELS).map(str), min_size=1, max_size=3))
    key = st.builds(literal, st.sampled_from(KEYS), quotes).map(lambda k: f"metadata[{k}]")
    metadata_clause = st.builds(clause_text, key, st.sampled_from(["==", "!=", "in", "not in"]),
                                st.lists(st.builds(literal, st.sampled_from(values), quotes), min_size=1, max_size=3))
    return st.recursive(st.one_of(label_clause, metadata_clause), lambda inner: st.one_of(
        inner.map(lambda a: f"not ({a})"),
        st.tuples(inner, inner, st.sampled_from([" and ", " && ", " or ", " || "])).map(lambda t: f"({t[0]}){t[2]}({t[1]})"),
    ), max_leaves=6)


EXAMPLES = [
    "label == 3", "label != 1", "label in [1, 2]", "label not in [0, 1]", "not (label == 0)", "not (label != 0)",
    "label == -5", "label == 9223372036854775807", "label == -9223372036854775808", "label in [42]",
    'metadata["source"] == "upload"', "metadata['source'] != 'upload'", 'metadata["source"] in ["upload", "crawl"]',
    'metadata["source"] not in ["upload"]', 'not (metadata["source"] == "upload")', 'metadata["source"] == ""',
    'metadata["source"] == "Upload"', 'metadata["source"] == "upload\nnext"', 'metadata["missing"] != "x"',
    'metadata["it\'s \\"quoted\\""] == "yes"', "metadata['it\\'s \"quoted\"'] != 'yes'", 'metadata["a.b[0]"] in ["dots", "x"]',
    'metadata["source"] == "\'); DROP TABLE items; --"', 'metadata["\'); DROP TABLE items; --"] != "x"',
    'label == 3 and metadata["source"] in ["upload", "crawl"]', "label == 0 or label == 1 and label == 2",
    'not label == 1 and metadata["split"] == "test"', "not not label == 1", "label != 0 or label == 0",
    'not (label == 1 or metadata["source"] == "crawl")', 'not (label != 1 and metadata["source"] != "crawl")',
    'label in [1, 2, 3] || metadata["split"] == "train" && not (metadata["source"] in ["crawl"])',
    '  (label==1)or(metadata [ "split" ]==\t"test")\n',
]


@pytest.mark.parametrize("text", EXAMPLES)
def test_the_table_selects_the_items_three_valued_logic_selects(table, text):
    parsed = parse_default(text)
    assert selected_by_table(table, parsed) == selected_by_definition(parsed)


@QUICK
@given(filter_texts(VALUES))
def test_the_table_selects_the_items_three_valued_logic_selects_for_any_filter(table, text):
    parsed = parse(text, 100_000, MAX_VALUES, 200)
    assert selected_by_table(table, parsed) == selected_by_definition(parsed)


def test_missing_labels_and_keys_decide_nothing(table):
    no_label = {row for row, (label, _) in enumerate(ITEMS) if label is None}
    no_source = {row for row, (_, metadata) in enumerate(ITEMS) if "source" not in metadata}
    for text in ["label != 3", "not (label == 3)", "label not in [3]", "not (label in [3])"]:
        assert selected_by_table(table, parse_default(text)).isdisjoint(no_label), text
    for text in ['metadata["source"] != "x"', 'not (metadata["source"] == "x")', 'metadata["source"] not in ["x"]']:
        assert selected_by_table(table, parse_default(text)).isdisjoint(no_source), text
    # no excluded middle for missing values, as in SQL
    assert selected_by_table(table, parse_default("label != 3 or not (label != 3)")) == set(range(len(ITEMS))) - no_label


def test_no_label_is_no_value(table):
    assert selected_by_table(table, parse_default(f"label == {NO_LABEL}")) == set()
    assert selected_by_table(table, parse_default(f"label != {NO_LABEL}")) == {row for row, (label, _) in enumerate(ITEMS) if label is not None}


def test_the_tree_follows_the_grammar():
    label = lambda op, *values: Comparison(Label(), op, values)  # noqa: E731
    source = lambda op, *values: Comparison(Metadata("source"), op, values)  # noqa: E731
    assert parse_default('label == 3 and metadata["source"] in ["upload", "crawl"]') == And((label("==", 3), source("in", "upload", "crawl")))
    assert parse_default("label == 0 or label == 1 and label == 2") == Or((label("==", 0), And((label("==", 1), label("==", 2)))))
    assert parse_default("not label == 1 and label == 2") == And((Not(label("==", 1)), label("==", 2)))
    assert parse_default("(label == 0 or label == 1) and label not in [2]") == And((Or((label("==", 0), label("==", 1))), label("not in", 2)))
    assert parse_default("label == 1 && label == 2 || label == 3") == parse_default("label == 1 and label == 2 or label == 3")
    assert parse_default("metadata['a\"b\\'c\\\\'] != \"\\\"\n\"") == Comparison(Metadata("a\"b'c\\"), "!=", ('"\n',))
    assert parse_default("((label == -0))") == label("==", 0)
    for text in ["", " ", " \t\r\n "]:
        assert parse_default(text) is None


@pytest.mark.parametrize("text, message", [
    ("lable == 3", 'at 0: unknown field \'lable\'; use label or metadata["key"]'),
    ("label in [1, 2", 'at 14: expected "]", got the end'),
    ("label in [1, 2 3]", 'at 15: expected "]", got \'3\''),
    ('label == "3"', "at 9: label compares with integers, not the string '3'"),
    ('metadata["a"] == 3', "at 17: metadata values are strings: put the number in quotes"),
    ('metadata["é"] == 3', "at 17: metadata values are strings: put the number in quotes"),  # characters, not bytes
    ("label == 3 and", 'at 14: expected label or metadata["key"], got the end'),
    ("label == 3 AND label == 4", 'at 11: expected "and", "or" or the end, got \'AND\''),
    ("label = 3", "at 6: unexpected character '='"),
    ("label == 3.5", "at 10: unexpected character '.'"),
    ("label == 010", "at 9: '010' is not a decimal integer (no leading zeros, no other bases)"),
    ("label == 0x1f", "at 9: '0x1f' is not a decimal integer (no leading zeros, no other bases)"),
    ("label == 9223372036854775808", "at 9: the integer does not fit 64 bits"),
    ("label == -9223372036854775809", "at 9: the integer does not fit 64 bits"),
    ("label == - 1", "at 9: unexpected character '-'"),
    ('metadata["a"] == "b', "at 17: the string is not closed"),
    ('metadata["a\\n"] == "b"', "at 11: unknown escape '\\\\n'; there are only \\\" \\' and \\\\"),
    ("metadata[source] == 'b'", "at 9: expected the key as a quoted string, got 'source'"),
    ("metadata == 'b'", 'at 9: expected "[", got \'==\''),
    ("label not == 3", 'at 10: expected "in", got \'==\''),
    ("label is 3", 'at 6: expected "==", "!=", "in" or "not in", got \'is\''),
    ("label in []", "at 10: expected an integer, got ']'"),
    ("label in [1,]", "at 12: expected an integer, got ']'"),
    ("metadata['a'] in ['b', ]", "at 23: expected a string, got ']'"),
    ("(label == 1", 'at 11: expected ")", got the end'),
    ("label == 1)", 'at 10: expected "and", "or" or the end, got \')\''),
    ("and label == 1", 'at 0: expected label or metadata["key"], got \'and\''),
    ("not", 'at 3: expected label or metadata["key"], got the end'),
    ("label == 1 \ud800", "at 11: not UTF-8 text (a lone surrogate)"),
])
def test_a_malformed_filter_is_refused_with_its_position(text, message):
    with pytest.raises(InvalidArgument) as refused:
        parse_default(text)
    assert (refused.value.description, refused.value.field) == (message, "filter")


def test_messages_echo_at_most_40_characters_of_the_filter():
    for text in ["x" * 1000 + " == 3", "label == 1 and " + "y" * 1000, 'label == "' + "z" * 1000 + '"', "label == " + "9" * 3000]:
        with pytest.raises(InvalidArgument) as refused:
            parse(text, 10**6, MAX_VALUES, MAX_DEPTH)
        assert len(refused.value.description) < 120, refused.value.description


def test_the_length_is_counted_in_bytes():
    text = 'metadata["k"] == "' + "é" * 11 + '"'  # 30 characters, 41 bytes
    assert parse(text, 41, MAX_VALUES, MAX_DEPTH) is not None
    with pytest.raises(ResourceExhausted) as refused:
        parse(text, 40, MAX_VALUES, MAX_DEPTH)
    assert (refused.value.description, refused.value.field) == ("41 bytes; the limit is 40", "filter")


def test_a_list_holds_at_most_max_values():
    values = ", ".join(str(i) for i in range(MAX_VALUES))
    assert len(parse(f"label in [{values}]", 10**5, MAX_VALUES, MAX_DEPTH).values) == MAX_VALUES
    with pytest.raises(ResourceExhausted, match=f"more than {MAX_VALUES} values in one list"):
        parse(f"label in [{values}, 1000]", 10**5, MAX_VALUES, MAX_DEPTH)


@pytest.mark.parametrize("opening, closing", [("(", ")"), ("not (", ")"), ("not ", "")])
def test_nesting_stops_at_max_depth_however_deep_the_text(opening, closing):
    def nested(depth: int) -> str:
        return opening * depth + "label == 1" + closing * depth

    per_level = (opening + closing).count("(") + opening.count("not")
    assert parse(nested(MAX_DEPTH // per_level), 10**7, MAX_VALUES, MAX_DEPTH) is not None
    with pytest.raises(ResourceExhausted, match=f"nested deeper than {MAX_DEPTH}"):
        parse(nested(MAX_DEPTH // per_level + 1), 10**7, MAX_VALUES, MAX_DEPTH)
    with pytest.raises(ResourceExhausted, match="nested deeper than"):
        parse(nested(10_000), 10**6, MAX_VALUES, MAX_DEPTH)


def test_a_deep_limit_still_parses_and_translates(table):
    text = "not (" * 150 + "label == 1" + ")" * 150  # 300 levels: even: the same as label == 1
    parsed = parse(text, 10**5, MAX_VALUES, 300)
    assert selected_by_table(table, parsed) == selected_by_table(table, parse_default("label == 1"))
    assert to_milvus(parsed) == "label == 1"


def test_a_huge_integer_is_refused_not_converted():
    with pytest.raises(InvalidArgument, match="does not fit 64 bits"):
        parse("label == " + "1" * 10_000, 10**5, MAX_VALUES, MAX_DEPTH)


def check_any_text(table, text: str) -> None:
    try:
        parsed = parse_default(text)
    except (InvalidArgument, ResourceExhausted) as refused:
        assert refused.field == "filter"
        message = refused.description
        assert not any(text[i : i + 41] in message for i in range(max(len(text) - 40, 0)))
        return
    if parsed is not None:
        selected_by_table(table, parsed)


@QUICK
@given(st.text())
def test_any_text_gives_a_filter_none_or_a_refusal(table, text):
    check_any_text(table, text)


PIECES = ["label", "metadata", "[", "]", "(", ")", "==", "!=", "=", "in", "not", "and", "or", "&&", "||", ",", " ",
          '"a"', "'b'", '"', "'", "\\", '"\\', "1", "-2", "007", "-", "99999999999999999999", "x", "\n", "é"]


@QUICK
@given(st.lists(st.sampled_from(PIECES), max_size=30).map("".join))
def test_any_text_near_the_grammar_gives_a_filter_none_or_a_refusal(table, text):
    check_any_text(table, text)


@pytest.mark.parametrize("text, milvus", [
    ("label == 3", "label == 3"),
    ("label in [1, 2]", "label in [1, 2]"),
    ('metadata["source"] == "upload"', 'metadata["source"] == "upload"'),
    ("label == 3 and metadata['source'] in ['upload', 'crawl']", 'label == 3 and metadata["source"] in ["upload", "crawl"]'),
    ("not (label == 0)", "(label != -2147483649 and label != 0)"),
    ("not (label in [0, 1])", "(label != -2147483649 and label not in [0, 1])"),
    ("label == -2147483649", "(label != -2147483649 and label == -2147483649)"),  # NO_LABEL, asked for: no unlabelled item
    ("label not in [1, -2147483649]", "label not in [1, -2147483649]"),
    ("label == -5 || label == -9223372036854775808", "label == -5 or label == (-9223372036854775807 - 1)"),
    ('metadata["source"] != "upload"', '(metadata["source"] >= "" and metadata["source"] != "upload")'),
    ('not (metadata["source"] in ["a", "b"])', '(metadata["source"] >= "" and metadata["source"] not in ["a", "b"])'),
    ('not (label == 1 or metadata["a"] == "x")', '(label != -2147483649 and label != 1) and (metadata["a"] >= "" and metadata["a"] != "x")'),
    ("(label == 1 or label == 2) and (label == 3 or label == 4) or label == 5",
     "(label == 1 or label == 2) and (label == 3 or label == 4) or label == 5"),
    ("not (label == 1 and (label == 2 or label == 3))",
     "(label != -2147483649 and label != 1) or (label != -2147483649 and label != 2) and (label != -2147483649 and label != 3)"),
    ("metadata['say \"hi\"'] == 'it\\'s'", "metadata['say \"hi\"'] == \"it's\""),
    ('metadata["a.b[0]/~"] == "back\\\\slash \\"quote\\""', 'metadata["a.b[0]/~"] == "back\\\\slash \\"quote\\""'),
    ('metadata["k"] in ["tab\t", "\x01", "é中🙂"]', 'metadata["k"] in ["tab\t", "\x01", "é中🙂"]'),  # Milvus decodes no other escapes
])
def test_milvus_text(text, milvus):
    assert to_milvus(parse_default(text)) == milvus


@pytest.mark.parametrize("key", ["", "a\\b", "a\nb", "x][y", "both ' and \""])
def test_milvus_cannot_name_every_key(key):
    with pytest.raises(InvalidArgument, match="cannot be named in a Milvus filter"):
        to_milvus(Comparison(Metadata(key), "==", ("v",)))


@QUICK
@given(filter_texts([v for v in VALUES if "\n" not in v]))
def test_milvus_text_without_key_guards_reads_back_as_the_same_filter(table, text):
    """Milvus text that stays inside this grammar (no `>= ""` guard, no escapes beyond \\" and \\\\) selects,
    when read back here, what the filter selects: the translation keeps the meaning. (Its label guard,
    `label != NO_LABEL`, is inside the grammar, and false here too for an item without a label.)"""
    parsed = parse(text, 100_000, MAX_VALUES, 200)
    try:
        milvus = to_milvus(parsed)
    except InvalidArgument:  # the key with both quotes, or the empty key
        return
    if '>= ""' not in milvus and "(-9223372036854775807 - 1)" not in milvus:
        assert selected_by_table(table, parse(milvus, 100_000, MAX_VALUES, 200)) == selected_by_table(table, parsed)


@QUICK
@given(st.text())
def test_milvus_strings_read_back_as_the_value(value):
    """Milvus Lite decodes \\" and \\\\ in a string, as this grammar does; a line break it cannot hold."""
    if "\n" in value or "\r" in value:
        with pytest.raises(InvalidArgument, match="line break"):
            to_milvus(Comparison(Metadata("k"), "==", (value,)))
        return
    milvus = to_milvus(Comparison(Metadata("k"), "==", (value,)))
    assert parse(milvus, 100_000, MAX_VALUES, MAX_DEPTH) == Comparison(Metadata("k"), "==", (value,))


@pytest.fixture(scope="module")
def lite(tmp_path_factory):
    """ITEMS in the default collection of a Milvus Lite file, as the Milvus backend stores them."""
    collections = MilvusCollections(str(tmp_path_factory.mktemp("lite") / "filters.db"))
    collections.open(Binding("m", 1, 2, 8))
    index = collections.get("default")
    index.add([NewItem(f"item-{row}", np.zeros(2, np.float32), np.zeros(1, np.uint8), label, metadata) for row, (label, metadata) in enumerate(ITEMS)])
    yield index
    collections.close()


def check_on_lite(lite, parsed) -> None:
    """Milvus Lite selects what the filter selects (by its definition), or cannot name one of its keys."""
    try:
        to_milvus(parsed)
    except InvalidArgument:
        return
    selected = {int(item.id.removeprefix("item-")) for item in lite.page("", len(ITEMS), parsed)}
    assert selected == selected_by_definition(parsed)


@pytest.mark.parametrize("text", EXAMPLES + ["label == -2147483649", "label != -2147483649", "label not in [-2147483649]"])
def test_milvus_lite_selects_the_items_three_valued_logic_selects(lite, text):
    check_on_lite(lite, parse_default(text))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(filter_texts(VALUES))
def test_milvus_lite_selects_the_items_three_valued_logic_selects_for_any_filter(lite, text):
    check_on_lite(lite, parse(text, 100_000, MAX_VALUES, 200))
