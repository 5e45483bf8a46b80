"""Checks of request fields that several capabilities share; each error names the field it refuses."""
from serving.errors import InvalidArgument, ResourceExhausted


def count(value: int, limit: int, field: str, unit: str) -> int:
    """A required count of `unit`s: 1 to `limit`; over the limit is RESOURCE_EXHAUSTED."""
    if value <= 0:
        raise InvalidArgument("must be at least 1", field)
    if value > limit:
        raise ResourceExhausted(f"{value} {unit}; the limit is {limit}", field)
    return value


def optional_count(value: int, default: int, limit: int, field: str, unit: str) -> int:
    """A count where 0 means `default`."""
    if value < 0:
        raise InvalidArgument("must be positive (0: the default)", field)
    return count(value or default, limit, field, unit)


def item_id(value: str, max_bytes: int, field: str) -> str:
    """An item id: 1 to `max_bytes` bytes of UTF-8."""
    if not value or len(value.encode()) > max_bytes:
        raise InvalidArgument(f"must be 1 to {max_bytes} bytes", field)
    return value


def unique_ids(ids: list[str], max_bytes: int, field: str) -> list[str]:
    """Ids of 1 to `max_bytes` bytes, none twice; `field` has a {} for the index, e.g. "items[{}].id"."""
    first_seen: dict[str, int] = {}
    for i, value in enumerate(ids):
        item_id(value, max_bytes, field.format(i))
        if value in first_seen:
            raise InvalidArgument(f"duplicates {field.format(first_seen[value])}", field.format(i))
        first_seen[value] = i
    return ids


def quoted(text: str, limit: int = 40) -> str:
    """A client's string for an error message: quoted, and cut to `limit` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."
