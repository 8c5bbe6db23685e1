"""Wire schemas (pydantic) and their converters; kept apart from the engines.

Native routes reject unknown fields (`extra="forbid"`: 422 naming them). The
sample schema is the training JSONL's: `{"id"?, "slices": [...], "metadata"?}`
with slices `{"type": "text", "text"}` or `{"type": "image", "base64"|"url"|"path"}`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

# Document ids: what a URL path segment carries unescaped and a file name can hold;
# no "/", no leading "." (no "..", no hidden names). Enforced where ids are created.
ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._:@+-]{0,255}$"
INT64 = (-(2**63), 2**63 - 1)
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


def _check_json(value: Any, where: str = "") -> Any:
    """Metadata and filters: UTF-8 strings (keys too) and integers that fit SQLite's int64."""
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if not INT64[0] <= value <= INT64[1]:
            raise ValueError(f"integer {value} at {where or 'value'} is out of the int64 range")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_text(k)
            _check_json(v, f"{where}.{k}" if where else k)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json(v, f"{where}[{i}]")
    return value


Text = Annotated[str, AfterValidator(_check_text)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_check_json)]


def _temperature_floor(value: float | None) -> float | None:
    return 0.0 if value is not None and value < TEMPERATURE_FLOOR else value


Temperature = Annotated[float, Field(ge=0.0, le=2.0), AfterValidator(_temperature_floor)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextSlice(Strict):
    type: Literal["text"]
    text: Text


class ImageSlice(Strict):
    type: Literal["image"]
    base64: str | None = None
    url: str | None = None
    path: str | None = None


SliceIn = Annotated[TextSlice | ImageSlice, Field(discriminator="type")]


class SampleIn(Strict):
    id: str | None = Field(default=None, pattern=ID_PATTERN)
    slices: list[SliceIn]
    metadata: JsonObject | None = None

    def raw(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class EmbedRequest(Strict):
    samples: list[SampleIn]
    store: bool = False
    upsert: bool = False


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


class RetrievalOptions(Strict):
    enabled: bool = True
    k: int | None = Field(default=None, ge=0)
    filters: JsonObject | None = None


class RetrieveRequest(Strict):
    query: SampleIn
    k: int = Field(default=5, ge=1)
    k_prime: int | None = Field(default=None, ge=1)
    filters: JsonObject | None = None
    images: Literal["url", "base64"] = "url"


class SliceOut(BaseModel):
    type: Literal["text", "image"]
    text: str | None = None
    url: str | None = None
    base64: str | None = None


class RetrievedDocument(BaseModel):
    id: str
    score: float
    ann_score: float
    metadata: dict[str, Any]
    slices: list[SliceOut]


class RetrieveResponse(BaseModel):
    results: list[RetrievedDocument]


class GenerateRequest(Strict):
    query: SampleIn
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: Temperature = 0.0
    stream: bool = False
    retrieval: RetrievalOptions = Field(default_factory=RetrievalOptions)


class DocumentScore(BaseModel):
    id: str
    score: float


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


class ChatImageURL(Loose):
    url: str


class ChatContentPart(Loose):
    type: str
    text: str | None = None
    image_url: ChatImageURL | None = None


class ChatMessage(Loose):
    # "developer" is OpenAI's newer name for "system" and is treated as one
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ChatContentPart] | None = None

    @field_validator("content")
    @classmethod
    def _utf8(cls, v: str | list[ChatContentPart] | None):
        # after the union is resolved, so the error names the text, not a union branch
        for text in [v] if isinstance(v, str) else [p.text for p in v or [] if p.text is not None]:
            _check_text(text)
        return v


class StreamOptions(Loose):
    include_usage: bool = False


class ChatCompletionRequest(Loose):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: Temperature | None = None
    n: int = Field(default=1, ge=1, le=1, description="one choice per request (n > 1 is not offered)")
    stream: bool = False
    stream_options: StreamOptions | None = None
    retrieval: RetrievalOptions | None = None


class EmbeddingsRequest(Loose):
    model: str | None = None
    input: Text | list[Text] | list[SampleIn]
    encoding_format: Literal["float", "base64"] = "float"
