"""Wire schemas (pydantic) and their converters; kept apart from the engines.

Native routes reject unknown fields (`extra="forbid"`: 422 naming them). The
sample schema is the training JSONL's: `{"id"?, "slices": [...], "metadata"?}`
with slices `{"type": "text", "text"}` or `{"type": "image", "base64"|"url"|"path"}`.
"""

from __future__ import annotations

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

from model.sample import BLANK

# Document ids: what a URL path segment carries unescaped and a file name can hold;
# no "/", no leading "." (no "..", no hidden names). Enforced where ids are created.
ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._:@+-]{0,255}$"
# filter integers: inside SQLite's int64, with a bound that reads the same as a double (so
# /openapi.json means the same to clients that parse JSON numbers as floats)
INT64 = (-9 * 10**18, 9 * 10**18)
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


def _check_json(value: Any) -> Any:
    """Metadata: UTF-8 strings, keys included (stored and returned as JSON)."""
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k)
            _check_json(v)
    elif isinstance(value, list):
        for v in value:
            _check_json(v)
    return value


def _check_filters(value: dict[str, Any]) -> dict[str, Any]:
    """Filters: as metadata, and scalar integers within SQLite's int64 (they are compared
    in SQL; nested values are compared in Python)."""
    _check_json(value)
    for k, v in value.items():
        if isinstance(v, int) and not isinstance(v, bool) and not INT64[0] <= v <= INT64[1]:
            raise ValueError(f"integer {v} of filter {k!r} is out of the int64 range")
        if isinstance(v, dict) and any(isinstance(op, str) and op.startswith("$") for op in v):
            if set(v) != {"$prefix"} or not isinstance(v["$prefix"], str):
                raise ValueError(f"filter {k!r}: the only operator is {{\"$prefix\": string}} "
                                 f"(got {sorted(v)})")
    return value


def _no_bools_for_ints(cls, data: Any) -> Any:
    """JSON true is not the integer 1 (pydantic's lax mode would take it as one)."""
    if isinstance(data, dict):
        for name, f in cls.model_fields.items():
            if f.annotation in (int, int | None) and isinstance(data.get(name), bool):
                raise ValueError(f"{name}: expected an integer, got a boolean")
    return data


Text = Annotated[str, AfterValidator(_check_text)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_check_json)]
# an object value is either plain metadata (no key starts with "$") or the one operator
# {"$prefix": string}: the schema says what `_check_filters` enforces (schemathesis found a
# schema-valid {"$x": ...} object refused with 422 when the schema allowed any object)
Filters = Annotated[dict[str, Any], AfterValidator(_check_filters), WithJsonSchema({
    "type": "object", "additionalProperties": {"anyOf": [
        {"type": "integer", "minimum": INT64[0], "maximum": INT64[1]},
        {"type": ["string", "boolean", "null", "array"]}, {"type": "number", "not": {"type": "integer"}},
        {"type": "object", "propertyNames": {"not": {"pattern": "^[$]"}}},
        {"type": "object", "properties": {"$prefix": {"type": "string"}}, "required": ["$prefix"],
         "additionalProperties": False}]}})]


def _temperature_floor(value: float | None) -> float | None:
    return 0.0 if value is not None and value < TEMPERATURE_FLOOR else value


# strict: a number (an integer is one), never a boolean that lax parsing would turn into 1.0 —
# also on the OpenAI routes, which otherwise accept what they can
Temperature = Annotated[StrictFloat, Field(ge=0.0, le=2.0), AfterValidator(_temperature_floor)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")
    _ints = model_validator(mode="before")(classmethod(_no_bools_for_ints))


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


class DocumentIn(SampleIn):
    """POST /documents: a sample whose id is required."""

    id: str = Field(pattern=ID_PATTERN)


class EmbedRequest(Strict):
    samples: list[SampleIn] = Field(min_length=1)
    store: StrictBool = False
    upsert: StrictBool = False


class SliceEmbedding(BaseModel):
    type: Literal["text", "image"]
    embedding: list[float]


class EmbeddingItem(BaseModel):
    slices: list[SliceEmbedding]
    embedding: list[float]
    id: str | None = None


class EmbedResponse(BaseModel):
    data: list[EmbeddingItem]
    embedding_version: str
    stored: list[str] = Field(default_factory=list)


SearchMode = Literal["dense", "hybrid", "lexical"]
LexicalWeight = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]  # a number, never a boolean


class RetrievalOptions(Strict):
    enabled: StrictBool = True
    k: int | None = Field(default=None, ge=0)
    filters: Filters | None = None
    mode: SearchMode | None = None  # default: the server's retrieval_mode
    lexical_weight: LexicalWeight | None = None  # hybrid: BM25's share


class RetrieveRequest(Strict):
    query: SampleIn
    k: int = Field(default=5, ge=1)
    k_prime: int | None = Field(default=None, ge=1)
    filters: Filters | None = None
    images: Literal["url", "base64"] = "url"
    # "dense": GA-kernel rerank of the ANN candidates; "lexical": BM25 over the documents'
    # text; "hybrid": both, their scores fused. Default: the server's retrieval_mode
    mode: SearchMode | None = None
    # hybrid: the BM25 side's share of the fused score; default: retrieval_lexical_weight
    lexical_weight: LexicalWeight | None = None


class SliceOut(BaseModel):
    type: Literal["text", "image"]
    text: str | None = None
    url: str | None = None
    base64: str | None = None


class RetrievedDocument(BaseModel):
    id: str
    score: float  # the mode's ranking score (hybrid: the fused score, relative score fusion)
    ann_score: float
    dense_score: float | None = None  # hybrid: the GA-kernel score
    lexical_score: float | None = None  # hybrid, lexical: BM25 (absent: no query word matched)
    metadata: dict[str, Any]
    slices: list[SliceOut]


class RetrieveResponse(BaseModel):
    results: list[RetrievedDocument]


class GenerateRequest(Strict):
    query: SampleIn
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: Temperature = 0.0
    stream: StrictBool = False
    retrieval: RetrievalOptions = Field(default_factory=RetrievalOptions)


class DocumentScore(BaseModel):
    """A document a generation used (or dropped), with what a client needs to cite it: the
    `source`, `title` and `page` of its metadata (null when the document has none)."""

    id: str
    score: float
    source: str | None = None
    title: str | None = None
    page: int | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    text: str
    documents: list[DocumentScore]
    dropped_documents: list[DocumentScore] = Field(default_factory=list)
    usage: Usage
    timings: dict[str, float]
    finish_reason: str


class UploadedFile(BaseModel):
    file: str
    source: str
    status: Literal["added", "updated", "unchanged"]
    format: str | None
    ids: list[str]
    chunks: int
    images: int
    embedded: int = Field(description="chunks embedded; unchanged chunks keep their vectors")
    removed: int = Field(description="chunks of an earlier version of the file deleted")
    skipped_images: list[str] = Field(description="linked images left out, each with its reason")


class UploadSummary(BaseModel):
    files: int
    chunks: int
    images: int
    embedded: int
    added: int
    updated: int
    unchanged: int
    removed: int
    skipped_images: int


class UploadResponse(BaseModel):
    ids: list[str]
    files: list[UploadedFile]
    summary: UploadSummary


class IndexStats(BaseModel):
    count: int
    dim: int
    type: str
    vectors: int
    tombstones: int
    embedding_version: str
    embedding_versions: dict[str, int]
    size_bytes: int


class DocumentOut(BaseModel):
    id: str
    metadata: dict[str, Any]
    slices: list[SliceOut]
    embedding_version: str


class DocumentList(BaseModel):
    ids: list[str]
    offset: int
    limit: int
    total: int


class DocumentAck(BaseModel):
    id: str
    status: Literal["created", "updated", "deleted"]


class ErrorBody(BaseModel):
    error: dict[str, Any]


class Health(BaseModel):
    status: str
    checks: dict[str, Any] = Field(default_factory=dict)


# ------------------------------------------------------------------ OpenAI


class Loose(BaseModel):
    """OpenAI routes accept (and log) fields we do not use, as vLLM does."""

    model_config = ConfigDict(extra="allow")
    _ints = model_validator(mode="before")(classmethod(_no_bools_for_ints))


class ChatImageURL(Loose):
    url: str


class ChatTextPart(Loose):
    type: Literal["text"]
    text: NonBlankText


class ChatImagePart(Loose):
    type: Literal["image_url"]
    image_url: ChatImageURL


ChatContentPart = Annotated[ChatTextPart | ChatImagePart, Field(discriminator="type")]


class ChatMessage(Loose):
    # "developer" is OpenAI's newer name for "system" and is treated as one
    role: Literal["system", "developer", "user", "assistant"]
    content: NonBlankText | Annotated[list[ChatContentPart], Field(min_length=1)]


class StreamOptions(Loose):
    include_usage: StrictBool = False


class ChatCompletionRequest(Loose):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, json_schema_extra={
        "contains": {"type": "object", "properties": {"role": {"const": "user"}}, "required": ["role"]}})
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: Temperature | None = None
    n: int = Field(default=1, ge=1, le=1, description="one choice per request (n > 1 is not offered)")
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    retrieval: RetrievalOptions | None = None


class EmbeddingsRequest(Loose):
    model: str | None = None
    input: NonBlankText | Annotated[list[NonBlankText], Field(min_length=1)] | Annotated[
        list[SampleIn], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"


def apply_limits(schema: dict, settings) -> dict:
    """Write the operator's runtime limits into the OpenAPI document, so what the schema
    admits is what the server accepts (maxItems, maxLength, maximum)."""
    comps = schema.get("components", {}).get("schemas", {})

    def prop(model: str, name: str) -> dict:
        return comps.get(model, {}).get("properties", {}).get(name, {})

    def arrays(node: dict):
        yield node
        yield from node.get("anyOf", [])

    # url and path sources exist only where the operator allow-listed them
    image = comps.get("ImageSlice", {})
    offered = {"base64"} | ({"url"} if settings.allow_urls else set()) | (
        {"path"} if settings.allow_paths else set())
    image["oneOf"] = [{"required": [k]} for k in ("base64", "url", "path") if k in offered]
    for k in {"url", "path"} - offered:
        image.get("properties", {}).pop(k, None)
    if not settings.allow_urls:  # chat images: data URLs only
        comps.get("ChatImageURL", {}).get("properties", {}).get("url", {})["pattern"] = "^data:"
    for model in ("SampleIn", "DocumentIn"):
        prop(model, "slices")["maxItems"] = settings.max_slices
    prop("TextSlice", "text")["maxLength"] = settings.max_text_chars
    prop("EmbedRequest", "samples")["maxItems"] = settings.max_samples_per_request
    for node in arrays(prop("EmbeddingsRequest", "input")):
        if node.get("type") == "array":
            node["maxItems"] = settings.max_samples_per_request
        elif node.get("type") == "string":
            node["maxLength"] = settings.max_text_chars
    prop("RetrieveRequest", "k")["maximum"] = settings.max_k
    prop("RetrieveRequest", "k_prime")["maximum"] = 10 * settings.max_k
    for model in ("GenerateRequest", "ChatCompletionRequest"):
        for name in ("max_tokens", "max_completion_tokens"):
            for node in arrays(prop(model, name)):
                if node.get("type") == "integer":
                    node["maximum"] = settings.max_tokens_limit
    for node in arrays(prop("RetrievalOptions", "k")):
        if node.get("type") == "integer":
            node["maximum"] = settings.max_k
    return schema
