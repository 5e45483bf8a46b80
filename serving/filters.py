"""Filters: which stored items a search, a listing or a delete applies to, chosen by label and metadata.

The syntax is a small subset of Milvus's boolean expressions (https://milvus.io/docs/boolean.md), so the
same filter runs on a Milvus backend too:

    label == 3
    label in [1, 2]
    metadata["source"] == "upload"
    label == 3 and metadata["source"] in ["upload", "crawl"]
    not (label == 0) or metadata["split"] != "test"

Grammar; spaces, tabs and line breaks may stand between any two tokens:

    filter  := or
    or      := and ("or" and)*
    and     := unary ("and" unary)*
    unary   := "not" unary | "(" or ")" | clause
    clause  := field ("==" | "!=") value
             | field ("in" | "not" "in") "[" value ("," value)* "]"
    field   := "label" | "metadata" "[" string "]"
    value   := integer (compared with label) | string (compared with metadata[...])

- `and` binds tighter than `or`; `not` applies to the one comparison or parenthesised group after it.
- Keywords are lower case; `&&` and `||` may stand for `and` and `or`.
- An integer is decimal, may be negative, has no leading zeros and fits 64 bits (-2^63 to 2^63 - 1).
- A string is in double or single quotes; inside it `\\"`, `\\'` and `\\\\` stand for the double quote,
  the single quote and the backslash. There are no other escapes; line breaks may be written as they are.
- Empty text, or only whitespace, is no filter: every item.

Missing values: a comparison with the label of an item that has none, or with a metadata key the item
lacks, is neither true nor false, and `not` leaves it so (as SQL and Milvus treat NULL). So `label != 3`
and `not (label == 3)` both leave out the items without a label, and `metadata["a"] != "x"` and
`metadata["a"] not in ["x"]` leave out the items without the key `a`; `or` still selects such an item
when its other side is true.

A malformed filter is INVALID_ARGUMENT, and its message says where, counting characters from 0:
`at 12: expected "]"`. Over a limit (settings `max_filter_bytes` of text, `max_filter_values` in one
list, `max_filter_depth` of nested parentheses and `not`s) is RESOURCE_EXHAUSTED.
"""
import re
from dataclasses import dataclass, replace

from serving.errors import InvalidArgument, ResourceExhausted
from serving.validation import quoted

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
NO_LABEL = -(2**31) - 1  # the stored label of an item without one on Milvus (no nullable fields in Milvus Lite): no int32 label
KEYWORDS = {"and", "or", "not", "in"}
NEGATED = {"==": "!=", "!=": "==", "in": "not in", "not in": "in"}


@dataclass(frozen=True)
class Label:
    """The item's label: an integer, or none."""


@dataclass(frozen=True)
class Metadata:
    """The item's metadata value under `key`: a string, or none when the item lacks the key."""

    key: str


@dataclass(frozen=True)
class Comparison:
    """`field == value`, `!=`, `in [values]` or `not in [values]`; neither true nor false for an item
    without the label or key."""

    field: Label | Metadata
    op: str  # "==", "!=", "in" or "not in"
    values: tuple[int, ...] | tuple[str, ...]  # integers for Label, strings for Metadata; one for == and !=


@dataclass(frozen=True)
class Not:
    operand: "Filter"


@dataclass(frozen=True)
class And:
    operands: tuple["Filter", ...]  # two or more


@dataclass(frozen=True)
class Or:
    operands: tuple["Filter", ...]  # two or more


Filter = Comparison | Not | And | Or


def parse(text: str, max_bytes: int, max_values: int, max_depth: int) -> Filter | None:
    """The filter `text` means, or None for no filter. Raises InvalidArgument or ResourceExhausted (field
    "filter") and nothing else; `max_depth` also bounds the parser's recursion (3 frames a level)."""
    try:
        size = len(text.encode())
    except UnicodeEncodeError as error:
        raise _invalid(error.start, "not UTF-8 text (a lone surrogate)") from None
    if size > max_bytes:
        raise ResourceExhausted(f"{size} bytes; the limit is {max_bytes}", "filter")
    if not text.strip(" \t\r\n"):
        return None
    parser = _Parser(_tokens(text), max_values, max_depth)
    parsed = parser.or_()
    token = parser.advance()
    if token.kind != "end":
        raise _invalid(token.at, f'expected "and", "or" or the end, got {_described(token)}')
    return parsed


def to_milvus(parsed: Filter) -> str:
    """The same filter as a Milvus expression over an INT64 field `label` (NO_LABEL for none) and a JSON
    field `metadata` of strings, in what Milvus Lite 2.5 accepts too. Raises InvalidArgument for a
    metadata key Milvus cannot name (see _milvus_key)."""
    return _milvus(_without_not(parsed))


def milvus_string(value: str) -> str:
    """`value` as a Milvus string literal. Milvus Lite 2.5.1 (checked) decodes only \\" and \\\\ in one, and
    a line break ends the expression, so a value holding one cannot be written: ValueError."""
    if "\n" in value or "\r" in value:
        raise ValueError("a Milvus string cannot hold a line break")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _invalid(at: int, message: str) -> InvalidArgument:
    return InvalidArgument(f"at {at}: {message}", "filter")


@dataclass(frozen=True)
class _Token:
    kind: str  # "word", "integer", "string", "symbol" or "end"
    text: str  # as written (a string's with its quotes, so no value reads as a keyword), `&&` and `||` as `and` and `or`
    value: int | str | None  # of an integer or a string
    at: int  # its first character's position in the filter text


_TOKEN = re.compile(
    "|".join([
        r"(?P<space>[ \t\r\n]+)",
        r"(?P<word>[A-Za-z_][A-Za-z0-9_]*)",
        r"(?P<integer>-?[0-9][A-Za-z0-9_]*)",  # wider than an integer, so that `0x1f` or `3a` is refused whole
        r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""",
        r"(?P<symbol>==|!=|&&|\|\||[()\[\],])",
    ]),
    re.DOTALL,
)


def _tokens(text: str) -> list[_Token]:
    tokens, at = [], 0
    while at < len(text):
        match = _TOKEN.match(text, at)
        if match is None:
            raise _invalid(at, "the string is not closed" if text[at] in "\"'" else f"unexpected character {quoted(text[at])}")
        kind, written = match.lastgroup, match.group()
        if kind != "space":
            value = _integer(written, at) if kind == "integer" else _string(written, at) if kind == "string" else None
            tokens.append(_Token(kind, {"&&": "and", "||": "or"}.get(written, written), value, at))
        at = match.end()
    tokens.append(_Token("end", "", None, len(text)))
    return tokens


def _integer(written: str, at: int) -> int:
    # Leading zeros are refused rather than read as decimal: Milvus reads `010` as octal 8.
    if not re.fullmatch(r"-?(0|[1-9][0-9]*)", written):
        raise _invalid(at, f"{quoted(written)} is not a decimal integer (no leading zeros, no other bases)")
    if len(written) > 20 or not INT64_MIN <= int(written) <= INT64_MAX:  # length first: int() of 5000 digits raises
        raise _invalid(at, "the integer does not fit 64 bits")
    return int(written)


def _string(written: str, at: int) -> str:
    def unescape(match: re.Match) -> str:
        if match.group(1) not in "\"'\\":
            raise _invalid(at + 1 + match.start(), f"unknown escape {quoted(match.group())}; there are only \\\" \\' and \\\\")
        return match.group(1)

    return re.sub(r"\\(.)", unescape, written[1:-1], flags=re.DOTALL)


def _described(token: _Token) -> str:
    return "the end" if token.kind == "end" else quoted(token.text)


class _Parser:
    """Recursive descent over the tokens, one method per rule of the grammar."""

    def __init__(self, tokens: list[_Token], max_values: int, max_depth: int):
        self.tokens, self.max_values, self.max_depth = tokens, max_values, max_depth
        self.next = 0  # index of the next token; stays on the end token once there
        self.depth = 0  # parentheses and `not`s open

    def peek(self) -> _Token:
        return self.tokens[self.next]

    def advance(self) -> _Token:
        token = self.tokens[self.next]
        if token.kind != "end":
            self.next += 1
        return token

    def take(self, text: str) -> bool:
        if self.peek().text == text:
            self.next += 1
            return True
        return False

    def expect(self, text: str) -> None:
        token = self.advance()
        if token.text != text:
            raise _invalid(token.at, f'expected "{text}", got {_described(token)}')

    def or_(self) -> Filter:
        operands = [self.and_()]
        while self.take("or"):
            operands.append(self.and_())
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def and_(self) -> Filter:
        operands = [self.unary()]
        while self.take("and"):
            operands.append(self.unary())
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def unary(self) -> Filter:
        token = self.peek()
        if token.text not in ("not", "("):
            return self.clause()
        if self.depth == self.max_depth:
            raise ResourceExhausted(f"at {token.at}: nested deeper than {self.max_depth} (parentheses and not)", "filter")
        self.depth += 1
        self.advance()
        if token.text == "not":
            node = Not(self.unary())
        else:
            node = self.or_()
            self.expect(")")
        self.depth -= 1
        return node

    def clause(self) -> Comparison:
        field = self.field()
        token = self.advance()
        op = token.text
        if op == "not":
            self.expect("in")
            op = "not in"
        elif op not in ("==", "!=", "in"):
            raise _invalid(token.at, f'expected "==", "!=", "in" or "not in", got {_described(token)}')
        if op in ("==", "!="):
            return Comparison(field, op, (self.value(field),))
        self.expect("[")
        values = [self.value(field)]
        while self.take(","):
            if len(values) == self.max_values:
                raise ResourceExhausted(f"at {self.peek().at}: more than {self.max_values} values in one list", "filter")
            values.append(self.value(field))
        self.expect("]")
        return Comparison(field, op, tuple(values))

    def field(self) -> Label | Metadata:
        token = self.advance()
        if token.text == "label":
            return Label()
        if token.text == "metadata":
            self.expect("[")
            key = self.advance()
            if key.kind != "string":
                raise _invalid(key.at, f"expected the key as a quoted string, got {_described(key)}")
            self.expect("]")
            return Metadata(key.value)
        if token.kind == "word" and token.text not in KEYWORDS:
            raise _invalid(token.at, f'unknown field {quoted(token.text)}; use label or metadata["key"]')
        raise _invalid(token.at, f'expected label or metadata["key"], got {_described(token)}')

    def value(self, field: Label | Metadata) -> int | str:
        token = self.advance()
        wanted = "integer" if isinstance(field, Label) else "string"
        if token.kind == wanted:
            return token.value
        if token.kind == "string":
            raise _invalid(token.at, f"label compares with integers, not the string {quoted(token.value)}")
        if token.kind == "integer":
            raise _invalid(token.at, "metadata values are strings: put the number in quotes")
        raise _invalid(token.at, f"expected {'an integer' if wanted == 'integer' else 'a string'}, got {_described(token)}")


def _without_not(node: Filter, negate: bool = False) -> Filter:
    """The same filter with every `not` pushed into the comparisons (De Morgan; `not ==` is `!=`, `not in`
    of `in`). A comparison with a missing label or key is then false wherever it stands, as Milvus
    reads it, which selects exactly the items that three-valued logic does."""
    if isinstance(node, Not):
        return _without_not(node.operand, not negate)
    if isinstance(node, Comparison):
        return replace(node, op=NEGATED[node.op]) if negate else node
    kind = {And: Or, Or: And}[type(node)] if negate else type(node)
    return kind(tuple(_without_not(operand, negate) for operand in node.operands))


# What Milvus does with this text, as read in milvus-io/milvus (internal/parser/planparserv2: Plan.g4,
# parser_visitor.go, utils.go; internal/core: ThreeValuedLogicOp, UnaryExpr.cpp) and its docs
# (https://milvus.io/docs/boolean.md, basic-operators.md, nullable-and-default.md):
# - a JSON key, `metadata["k"]` or `metadata['k']` with no space before `[`, is taken verbatim between its
#   quotes, with no unescaping, after splitting the path at `][` (getColumnInfoFromJSONIdentifier);
# - `metadata["k"] != v` is true when the key is missing (UnaryRangeJSONCompareNotEqual), and so is `not in`.
# Milvus Lite 2.5.1 (checked) refuses `not`, `exists` and nullable fields, and in a string literal decodes
# only \" and \\ (see milvus_string). So `not` is pushed down, a comparison that would be true for an item
# without the key is guarded with `metadata["k"] >= ""` (true exactly when the key holds a string), and one
# that would be true for the NO_LABEL of an item without a label with `label != NO_LABEL`.
def _milvus(node: Filter) -> str:
    if isinstance(node, Or):
        return " or ".join(_milvus(operand) for operand in node.operands)
    if isinstance(node, And):  # `and` binds tighter than `or`
        return " and ".join(f"({_milvus(operand)})" if isinstance(operand, Or) else _milvus(operand) for operand in node.operands)
    field = "label" if isinstance(node.field, Label) else _milvus_key(node.field.key)
    values = [_milvus_integer(v) if isinstance(node.field, Label) else _milvus_value(v) for v in node.values]
    comparison = f"{field} {node.op} {values[0] if node.op in ('==', '!=') else '[' + ', '.join(values) + ']'}"
    if isinstance(node.field, Label):
        true_without_label = (NO_LABEL in node.values) == (node.op in ("==", "in"))
        return f"(label != {NO_LABEL} and {comparison})" if true_without_label else comparison
    if node.op in ("!=", "not in"):
        return f'({field} >= "" and {comparison})'
    return comparison


def _milvus_key(key: str) -> str:
    if not key or "\\" in key or "\r" in key or "\n" in key or "][" in key or ('"' in key and "'" in key):
        raise InvalidArgument(f"the metadata key {quoted(key)} cannot be named in a Milvus filter", "filter")
    quote = "'" if '"' in key else '"'
    return f"metadata[{quote}{key}{quote}]"


def _milvus_value(value: str) -> str:
    try:
        return milvus_string(value)
    except ValueError:
        raise InvalidArgument(f"the value {quoted(value)} holds a line break, which a Milvus filter cannot", "filter") from None


def _milvus_integer(value: int) -> str:
    # Milvus reads `-n` as minus the literal n, and 2^63 is no INT64 literal.
    return "(-9223372036854775807 - 1)" if value == INT64_MIN else str(value)
