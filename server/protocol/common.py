"""Wire types every endpoint family shares: validators, samples and slices, retrieval options,
usage, errors, health.

Native routes reject unknown fields (`Strict`, `extra="forbid"`: 422 naming them); the OpenAI
routes accept and log them (`openai.Loose`). The sample schema is the training JSONL's:
`{"id"?, "slices": [...], "metadata"?}` with slices `{"type": "text", "text"}` or
`{"type": "image", "base64"|"url"|"path"}`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    WithJsonSchema,
    model_validator,
)

from model.filters import INT64, FilterError  # noqa: F401 - INT64: re-exported (server.protocol)
from model.filters import parse as parse_filter
from model.sample import BLANK, DOCUMENT_ID
from model.search import DEFAULT_COLLECTION, SEARCH_MODES, SearchParams

ID_PATTERN = DOCUMENT_ID  # model.sample: the one grammar, also for ids inside uploaded JSONL

# below this a temperature is greedy decoding (vLLM's sampling epsilon): logits / 1e-100
# overflow to inf/nan, and no sampler tells such temperatures apart from 0
TEMPERATURE_FLOOR = 1e-5


def _check_text(value: str) -> str:
    """Text must be encodable as UTF-8: JSON allows lone surrogates (\\ud800), tokenizers do not."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"text holds an unpaired surrogate at character {e.start} "
                         "(not valid Unicode; send UTF-8 text)") from None
    return value


# metadata nested deeper than this is refused (a filter or a label needs a few levels)
MAX_JSON_DEPTH = 64


def check_json(value: Any) -> Any:
    """Metadata: UTF-8 strings (keys included), finite numbers (JSON has no NaN or Infinity;
    Python's parser takes them, and 1e400, as floats), nesting within MAX_JSON_DEPTH levels.
    Walked without recursion."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        v, depth, where = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        if isinstance(v, str):
            _check_text(v)
        elif isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{where.lstrip('.') or 'value'}: {v} is not a finite number (JSON has no NaN or "
                             "Infinity; numbers beyond the double range are refused)")
        elif isinstance(v, dict):
            for k, x in v.items():
                _check_text(k)
                stack.append((x, depth + 1, f"{where}.{k}"))
        elif isinstance(v, list):
            stack.extend((x, depth + 1, f"{where}[{i}]") for i, x in enumerate(v))
    return value


def _check_filters(value: dict[str, Any]) -> dict[str, Any]:
    """Filters: as metadata (UTF-8, finite, bounded depth), then the filter grammar
    (model/filters.py: operators, types, numbers within SQLite's int64)."""
    check_json(value)
    try:
        parse_filter(value)
    except FilterError as e:
        raise ValueError(str(e)) from None
    return value


def _no_bools_for_ints(cls, data: Any) -> Any:
    """JSON true is not the integer 1 (pydantic's lax mode would take it as one)."""
    if isinstance(data, dict):
        for name, f in cls.model_fields.items():
            if f.annotation in (int, int | None) and isinstance(data.get(name), bool):
                raise ValueError(f"{name}: expected an integer, got a boolean")
    return data


Text = Annotated[str, AfterValidator(_check_text)]
JsonObject = Annotated[dict[str, Any], AfterValidator(check_json)]
# the grammar's JSON Schema is published once, as the component `Filters` (server/openapi.py)
Filters = Annotated[dict[str, Any], AfterValidator(_check_filters),
                    WithJsonSchema({"$ref": "#/components/schemas/Filters"})]


def _temperature_floor(value: float | None) -> float | None:
    return 0.0 if value is not None and value < TEMPERATURE_FLOOR else value


# strict: a number (an integer is one), never a boolean that lax parsing would turn into 1.0 —
# also on the OpenAI routes, which otherwise accept what they can
Temperature = Annotated[StrictFloat, Field(ge=0.0, le=2.0), AfterValidator(_temperature_floor)]


class Wire(BaseModel):
    """A request model: JSON true is never taken for the integer 1."""

    @model_validator(mode="before")
    @classmethod
    def _ints(cls, data: Any) -> Any:
        return _no_bools_for_ints(cls, data)


class Strict(Wire):
    model_config = ConfigDict(extra="forbid")


# non-empty after stripping ASCII whitespace, no NUL (what model.sample enforces); the
# character class is spelled out so every regex dialect reads the schema the same way
NON_BLANK = r"^[^\x00]*[^ \t\n\r\f\v\x00][^\x00]*$"


def _check_non_blank(value: str) -> str:
    _check_text(value)
    if "\x00" in value:
        raise ValueError("text contains a NUL character")
    if not value.strip(BLANK):
        raise ValueError("text is empty")
    return value


# validated in Python (clear messages, no union noise); declared to clients as a pattern
NonBlankText = Annotated[str, AfterValidator(_check_non_blank),
                         WithJsonSchema({"type": "string", "minLength": 1, "pattern": NON_BLANK})]


ASCII = r"^[\x21-\x7e]+$"  # base64, data URLs and URLs: printable ASCII, no spaces


def given(name: str) -> dict[str, Any]:
    """JSON Schema: the field is sent, and not as null (a null reads as left out)."""
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


def missing(name: str) -> dict[str, Any]:
    """JSON Schema: the field is left out, or sent as null."""
    return {"anyOf": [{"not": {"required": [name]}}, {"properties": {name: {"type": "null"}}}]}


def one_of(*branches: dict[str, Any], **rules: Any) -> Callable[[dict[str, Any]], None]:
    """A `json_schema_extra` publishing what a model validator enforces: exactly one of
    `branches` holds (and `rules`: more top-level keywords, e.g. `not`, `allOf`), so what the
    schema admits is what the server accepts."""

    def extra(schema: dict[str, Any]) -> None:
        schema["oneOf"] = list(branches)
        schema.update(rules)

    return extra


class TextSlice(Strict):
    type: Literal["text"]
    text: NonBlankText


class ImageSlice(Strict):
    """Exactly one source: inline `base64` (or a data URL), or, where the operator
    allows them, a `url` or a server-side `path`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=lambda schema: schema.update({
        "oneOf": [{"required": ["base64"]}, {"required": ["url"]}, {"required": ["path"]}],
        "properties": {"type": schema["properties"]["type"],
                       **{k: {"type": "string", "minLength": 1, "pattern": ASCII} for k in ("base64", "url")},
                       "path": {"type": "string", "minLength": 1}}}))
    type: Literal["image"]
    base64: str | None = Field(default=None, min_length=1, pattern=ASCII)
    url: str | None = Field(default=None, min_length=1, pattern=ASCII)
    path: Text | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> ImageSlice:
        if sum(v is not None for v in (self.base64, self.url, self.path)) != 1:
            raise ValueError("an image slice needs exactly one of 'base64', 'path', 'url'")
        return self


SliceIn = Annotated[TextSlice | ImageSlice, Field(discriminator="type")]


class SampleIn(Strict):
    id: str | None = Field(default=None, pattern=ID_PATTERN)
    slices: list[SliceIn] = Field(min_length=1)
    metadata: JsonObject | None = None

    def raw(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


SearchMode = Literal["dense", "hybrid", "lexical"]
assert set(SearchMode.__args__) == set(SEARCH_MODES)  # type: ignore[attr-defined]  # one list of modes
LexicalWeight = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]  # a number, never a boolean
# a collection's name: the document id grammar (model.sample.DOCUMENT_ID)
COLLECTION_PATTERN = DOCUMENT_ID
CollectionName = Annotated[str, Field(pattern=COLLECTION_PATTERN, description="a collection's name "
                                      f"(default: {DEFAULT_COLLECTION!r})")]


class RetrievalOptions(Strict):
    enabled: StrictBool = True
    k: int | None = Field(default=None, ge=0)
    filters: Filters | None = None
    mode: SearchMode | None = None  # default: the server's retrieval_mode
    lexical_weight: LexicalWeight | None = None  # hybrid: BM25's share
    collection: CollectionName | None = None  # default: "default"

    def to_search_params(self, default_k: int) -> SearchParams:
        """The search these options ask for (`default_k`: the server's retrieval_k)."""
        return SearchParams(k=default_k if self.k is None else self.k, filters=self.filters, mode=self.mode,
                            lexical_weight=self.lexical_weight, with_images=True,
                            collections=(self.collection or DEFAULT_COLLECTION,))


class StoredRef(Strict):
    """A stored document by id: its stored slice vectors are used, nothing is embedded again."""

    id: str = Field(pattern=ID_PATTERN)


class AlignedSlices(BaseModel):
    query_slice: int
    document_slice: int
    weight: float = Field(description="the share of the soft alignment through this pair of slices")
    similarity: float = Field(description="the cosine of their slice vectors")


class Explanation(BaseModel):
    """`explain: true`: for each query slice, the document slice its soft alignment (the
    alignment kernel's posterior over monotone alignments) goes through most."""

    alignment: list[AlignedSlices]
    score: float = Field(description="s̄, the length-normalised log alignment kernel (relevance = exp(s̄))")


class SliceOut(BaseModel):
    type: Literal["text", "image"]
    text: str | None = None
    url: str | None = None
    base64: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ErrorBody(BaseModel):
    error: dict[str, Any]


class Health(BaseModel):
    status: str
    checks: dict[str, Any] = Field(default_factory=dict)
