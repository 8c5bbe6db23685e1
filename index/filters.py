"""The metadata filters (model/filters.py) compiled into each backend's SQL.

`sqlite(node)` and `postgres(node)` give a WHERE clause and its arguments over the `docs`
table's JSON metadata; both select exactly the documents `model.filters.matches` accepts
(the stores still check each row with it: the reference has the last word). On PostgreSQL the
clause also goes into the HNSW scan of stage 1, so a selective filter still returns k.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from model.filters import Cond, Node

_SQLITE_TYPE = {str: "'text'", bool: None, int: "'integer', 'real'", float: "'integer', 'real'"}
_ORDER_OPS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# ---------------------------------------------------------------------------- SQLite (JSON1)


def _compile(node: Node, cond: Callable[[Cond], tuple[str, list[Any]]], everything: str) -> tuple[str, list[Any]]:
    """$and/$or joined in SQL, each condition compiled by `cond`; `{}` selects `everything`."""
    if isinstance(node, Cond):
        return cond(node)
    if not node.parts:
        return everything, []
    parts = [_compile(p, cond, everything) for p in node.parts]
    joiner = " AND " if node.op == "$and" else " OR "
    return "(" + joiner.join(sql for sql, _ in parts) + ")", [a for _, args in parts for a in args]


def sqlite(node: Node) -> tuple[str, list[Any]]:
    return _compile(node, _sqlite_cond, "1")


def _sqlite_eq(path: str, v: Any) -> tuple[str, list[Any]]:
    t = "json_type(metadata, ?)"
    if v is None:
        return f"{t} = 'null'", [path]
    if isinstance(v, bool):
        return f"{t} = ?", [path, "true" if v else "false"]
    if _is_number(v):
        return f"({t} IN ('integer', 'real') AND json_extract(metadata, ?) = ?)", [path, path, v]
    if isinstance(v, str):
        return f"({t} = 'text' AND json_extract(metadata, ?) = ?)", [path, path, v]
    # an object or an array: compared as JSON (json() normalises the stored text; the
    # reference re-checks key order and number spelling)
    kind = "object" if isinstance(v, dict) else "array"
    return f"{t} = '{kind}'", [path]


def _sqlite_cond(c: Cond) -> tuple[str, list[Any]]:
    path = "$." + json.dumps(c.key)
    present = "json_type(metadata, ?) IS NOT NULL"
    if c.op == "$exists":
        return (present if c.value else f"NOT ({present})"), [path]
    if c.op == "$eq":
        return _sqlite_eq(path, c.value)
    if c.op == "$ne":
        if isinstance(c.value, dict | list):  # equality to it is a superset here: its negation is not
            return "1", []
        sql, args = _sqlite_eq(path, c.value)
        return f"(json_type(metadata, ?) IS NULL OR NOT {sql})", [path, *args]
    if c.op in ("$in", "$nin"):
        # (the grammar keeps $in/$nin values scalar: each equality below is exact, so NOT is too)
        if not c.value:
            return ("0" if c.op == "$in" else "1"), []
        parts = [_sqlite_eq(path, v) for v in c.value]
        any_sql = "(" + " OR ".join(s for s, _ in parts) + ")"
        args = [a for _, xs in parts for a in xs]
        if c.op == "$in":
            return any_sql, args
        return f"(json_type(metadata, ?) IS NULL OR NOT {any_sql})", [path, *args]
    if c.op == "$prefix":
        return ("(json_type(metadata, ?) = 'text' AND substr(json_extract(metadata, ?), 1, ?) = ?)",
                [path, path, len(c.value), c.value])
    kinds = "'integer', 'real'" if _is_number(c.value) else "'text'"
    return (f"(json_type(metadata, ?) IN ({kinds}) AND json_extract(metadata, ?) {_ORDER_OPS[c.op]} ?)",
            [path, path, c.value])


# ---------------------------------------------------------------------------- PostgreSQL (jsonb)


def postgres(node: Node) -> tuple[str, list[Any]]:
    return _compile(node, _pg_cond, "TRUE")


def _pg_cond(c: Cond) -> tuple[str, list[Any]]:
    k = c.key
    if c.op == "$exists":
        return ("(metadata ? %s)" if c.value else "NOT (metadata ? %s)"), [k]
    if c.op == "$eq":
        return "(metadata -> %s = %s::jsonb)", [k, json.dumps(c.value)]
    if c.op == "$ne":
        return "(NOT (metadata ? %s) OR metadata -> %s <> %s::jsonb)", [k, k, json.dumps(c.value)]
    if c.op in ("$in", "$nin"):
        values = [json.dumps(v) for v in c.value]
        if c.op == "$in":
            return "(metadata -> %s = ANY(%s::jsonb[]))", [k, values]
        return "(NOT (metadata ? %s) OR NOT (metadata -> %s = ANY(%s::jsonb[])))", [k, k, values]
    if c.op == "$prefix":
        return ("(jsonb_typeof(metadata -> %s) = 'string' AND left(metadata ->> %s, %s) = %s)",
                [k, k, len(c.value), c.value])
    op = _ORDER_OPS[c.op]
    # CASE, not AND: PostgreSQL may evaluate a cast before the type test beside it
    if _is_number(c.value):
        return (f"(CASE WHEN jsonb_typeof(metadata -> %s) = 'number' THEN (metadata ->> %s)::numeric {op} %s"
                " ELSE false END)", [k, k, c.value])
    # strings by code point on both backends: SQLite's BINARY collation is UTF-8 byte order
    return (f"(CASE WHEN jsonb_typeof(metadata -> %s) = 'string' THEN (metadata ->> %s) COLLATE \"C\" {op} %s"
            " ELSE false END)", [k, k, c.value])


__all__ = ["postgres", "sqlite"]
