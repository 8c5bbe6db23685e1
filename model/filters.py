"""Metadata filters: one grammar, one parser, one reference evaluator (torch-free).

The wire models validate filters with `parse`, both storage backends compile the parsed tree
into SQL (index/filters.py) and check every candidate with `matches`, so a filter means the
same on SQLite and on PostgreSQL, and the same as this reference.

    {"lang": "fr"}                          equality (JSON equality: true is not 1)
    {"year": {"$gte": 2020, "$lt": 2024}}   every operator of an object must hold
    {"$or": [{"lang": "fr"}, {"lang": "de"}], "kind": {"$ne": "draft"}}

Operators: `$eq $ne $gt $gte $lt $lte $in $nin $exists $prefix` on a key, `$and $or` over
filters. Order comparisons take numbers against numbers and strings against strings (by code
point: UTF-8 byte order on both backends); a value of another type does not match. `$ne`
and `$nin` match a document without the key, as in MongoDB; every other operator needs it.
A key's value that is an object without operators is compared whole (JSON equality).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists", "$prefix")
LOGICAL = ("$and", "$or")
INT64 = (-9 * 10**18, 9 * 10**18)  # numbers in filters: inside SQLite's int64 (JSON doubles agree)
MAX_DEPTH = 8  # nested $and/$or
MAX_LIST = 1000  # $in / $nin values


class FilterError(ValueError):
    """A filter outside the grammar; the message names the key and the operator."""


@dataclass(frozen=True)
class Cond:
    """One operator on one key."""

    key: str
    op: str  # one of OPERATORS
    value: Any


@dataclass(frozen=True)
class Logic:
    op: str  # "$and" | "$or"
    parts: tuple[Node, ...]


Node = Cond | Logic


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_number(v: Any, where: str) -> None:
    if _number(v) and (not math.isfinite(v) or not INT64[0] <= v <= INT64[1]):
        raise FilterError(f"number {v} of filter {where} is out of the int64 range")


def parse(filters: Any, depth: int = 0) -> Node:
    """The tree of `filters` (a JSON object); FilterError naming what is wrong."""
    if not isinstance(filters, dict):
        raise FilterError("a filter is a JSON object")
    if depth > MAX_DEPTH:
        raise FilterError(f"$and/$or nested deeper than {MAX_DEPTH} levels")
    parts: list[Node] = []
    for key, value in filters.items():
        if key in LOGICAL:
            if not isinstance(value, list) or not value:
                raise FilterError(f"{key} takes a non-empty list of filters")
            parts.append(Logic(key, tuple(parse(f, depth + 1) for f in value)))
        elif isinstance(key, str) and key.startswith("$"):
            raise FilterError(f"unknown operator {key!r} at the top of a filter (known: {', '.join(LOGICAL)})")
        elif isinstance(value, dict) and any(isinstance(k, str) and k.startswith("$") for k in value):
            if not value:
                raise FilterError(f"filter {key!r}: an empty operator object")
            for op, arg in value.items():
                parts.append(_cond(key, op, arg))
        else:
            _check_number(value, repr(key))
            parts.append(Cond(key, "$eq", value))
    return parts[0] if len(parts) == 1 else Logic("$and", tuple(parts))


def _cond(key: str, op: Any, arg: Any) -> Cond:
    where = f"{key!r} {op}"
    if op not in OPERATORS:
        raise FilterError(f"filter {key!r}: unknown operator {op!r} (known: {', '.join(OPERATORS)})")
    if op in ("$gt", "$gte", "$lt", "$lte") and not (_number(arg) or isinstance(arg, str)):
        raise FilterError(f"filter {where} takes a number or a string")
    if op in ("$in", "$nin"):
        if not isinstance(arg, list) or not all(_scalar(x) for x in arg) or len(arg) > MAX_LIST:
            raise FilterError(f"filter {where} takes a list of at most {MAX_LIST} strings, numbers, booleans or nulls")
        for x in arg:
            _check_number(x, where)
    if op == "$exists" and not isinstance(arg, bool):
        raise FilterError(f"filter {where} takes true or false")
    if op == "$prefix" and not isinstance(arg, str):
        raise FilterError(f"filter {where} takes a string")
    if op in ("$eq", "$ne"):
        _check_number(arg, where)
    elif _number(arg):
        _check_number(arg, where)
    return Cond(key, op, arg)


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers, 1 equals 1.0, objects and arrays compared whole."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _number(a) and _number(b):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _ordered(v: Any, arg: Any) -> bool:
    """Whether `v` and `arg` compare by order (both numbers, or both strings)."""
    return (_number(v) and _number(arg)) or (isinstance(v, str) and isinstance(arg, str))


def holds(c: Cond, metadata: dict[str, Any]) -> bool:
    present = c.key in metadata
    v = metadata.get(c.key)
    if c.op == "$exists":
        return present == c.value
    if c.op == "$ne":
        return not present or not json_equal(v, c.value)
    if c.op == "$nin":
        return not present or not any(json_equal(v, x) for x in c.value)
    if not present:
        return False
    if c.op == "$eq":
        return json_equal(v, c.value)
    if c.op == "$in":
        return any(json_equal(v, x) for x in c.value)
    if c.op == "$prefix":
        return isinstance(v, str) and v.startswith(c.value)
    if not _ordered(v, c.value):
        return False
    return {"$gt": v > c.value, "$gte": v >= c.value, "$lt": v < c.value, "$lte": v <= c.value}[c.op]


def matches(node: Node, metadata: dict[str, Any]) -> bool:
    """The reference: does a document's metadata satisfy the filter?"""
    if isinstance(node, Cond):
        return holds(node, metadata)
    results = (matches(p, metadata) for p in node.parts)
    return all(results) if node.op == "$and" else any(results)


def filter_component(depth: int = 0) -> str:
    """The OpenAPI component name of the filter schema at `depth`: Filters, Filters1 … Filters8."""
    return "Filters" if depth == 0 else f"Filters{depth}"


def filter_schemas() -> dict[str, dict[str, Any]]:
    """Every level's schema by component name (the OpenAPI document publishes them all)."""
    return {filter_component(d): filter_schema(d) for d in range(MAX_DEPTH + 1)}


def filter_schema(depth: int = 0) -> dict[str, Any]:
    """The JSON Schema of a filter exactly as `parse` takes it at `depth` (the component
    `Filters` is depth 0). $and/$or hold the next level's component, down to MAX_DEPTH where they
    are no longer allowed: the schema bounds the nesting as the parser does (one recursive $ref
    would admit any depth)."""
    lo, hi = INT64
    # a number within the bound (JSON Schema calls a whole double an integer: "number" covers both)
    num = {"type": "number", "minimum": lo, "maximum": hi}
    out_of_range = {"type": "number", "anyOf": [{"exclusiveMaximum": lo}, {"exclusiveMinimum": hi}]}
    scalar = {"anyOf": [{"type": "string"}, num, {"type": "boolean"}, {"type": "null"}]}
    order = {"anyOf": [num, {"type": "string"}]}
    ops = {"$eq": {"not": out_of_range}, "$ne": {"not": out_of_range}, "$gt": order, "$gte": order, "$lt": order,
           "$lte": order, "$in": {"type": "array", "items": scalar, "maxItems": MAX_LIST},
           "$nin": {"type": "array", "items": scalar, "maxItems": MAX_LIST},
           "$exists": {"type": "boolean"}, "$prefix": {"type": "string"}}
    dollar = {"pattern": "^[$]"}
    nested = depth < MAX_DEPTH
    inner = {"$ref": f"#/components/schemas/{filter_component(depth + 1)}"}
    return {
        "type": "object",
        **({"description": "metadata filters: a key's value (JSON equality), or an object of operators "
                           f"({', '.join(OPERATORS)}); {', '.join(LOGICAL)} over lists of filters, "
                           f"nested at most {MAX_DEPTH} levels"} if depth == 0 else {}),
        "propertyNames": {"anyOf": [{"enum": list(LOGICAL)}, {"not": dollar}]} if nested else {"not": dollar},
        **({"properties": {op: {"type": "array", "minItems": 1, "items": inner} for op in LOGICAL}}
           if nested else {}),
        "additionalProperties": {"anyOf": [
            {"type": "object", "minProperties": 1, "properties": ops, "additionalProperties": False,
             "propertyNames": dollar},  # operators
            {"type": "object", "propertyNames": {"not": dollar}},  # an object compared whole
            {"not": {"anyOf": [{"type": "object"}, out_of_range]}},  # a value compared whole
        ]},
    }


__all__ = ["LOGICAL", "OPERATORS", "Cond", "FilterError", "Logic", "Node", "filter_component", "filter_schema",
           "filter_schemas", "holds", "json_equal", "matches", "parse"]
