"""Wire schemas (pydantic) and their converters; kept apart from the engines.

Native routes reject unknown fields (`extra="forbid"`: 422 naming them). The
sample schema is the training JSONL's: `{"id"?, "slices": [...], "metadata"?}`
with slices `{"type": "text", "text"}` or `{"type": "image", "base64"|"url"|"path"}`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextSlice(Strict):
    type: Literal["text"]
    text: str


class ImageSlice(Strict):
    type: Literal["image"]
    base64: str | None = None
    url: str | None = None
    path: str | None = None


SliceIn = Annotated[TextSlice | ImageSlice, Field(discriminator="type")]


class SampleIn(Strict):
    id: str | None = Field(default=None, min_length=1, max_length=512)
    slices: list[SliceIn]
    metadata: dict[str, Any] | None = None

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
    filters: dict[str, Any] | None = None


class RetrieveRequest(Strict):
    query: SampleIn
    k: int = Field(default=5, ge=1)
    k_prime: int | None = Field(default=None, ge=1)
    filters: dict[str, Any] | None = None
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
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
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
    role: Literal["system", "user", "assistant"]
    content: str | list[ChatContentPart] | None = None


class ChatCompletionRequest(Loose):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    stream: bool = False
    retrieval: RetrievalOptions | None = None


class EmbeddingsRequest(Loose):
    model: str | None = None
    input: str | list[str] | list[SampleIn]
    encoding_format: Literal["float", "base64"] = "float"
