"""Rerank and score: POST /v1/rerank (also /rerank, /v2/rerank) and POST /score, in the shapes
vLLM, Cohere, Jina and Infinity use (TEI's `texts` accepted for `documents`), scored by the
checkpoint's alignment kernel over slice vectors."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from .common import (
    CollectionName,
    Explanation,
    NonBlankText,
    SampleIn,
    StoredRef,
    Strict,
    given,
    missing,
    one_of,
)
from .openai import ChatContentPart, Loose


class TextDocument(Loose):
    """Cohere's document object: `text`, and any other fields (kept out of the scoring)."""

    text: NonBlankText


class ContentDocument(Strict):
    """Chat-style content parts (text, `image_url`), as vLLM's multimodal score inputs."""

    content: Annotated[list[ChatContentPart], Field(min_length=1)]


RerankDocument = NonBlankText | StoredRef | SampleIn | ContentDocument | TextDocument
RerankQuery = NonBlankText | SampleIn


class RerankRequest(Loose):
    model_config = ConfigDict(extra="allow", json_schema_extra=one_of(given("documents"), given("texts")))
    model: str | None = None
    query: RerankQuery
    documents: Annotated[list[RerankDocument], Field(min_length=1)] | None = None
    texts: Annotated[list[NonBlankText], Field(min_length=1)] | None = Field(
        default=None, description="TEI's name for `documents` (strings)")
    top_n: int | None = Field(default=None, ge=1)
    return_documents: StrictBool = True
    explain: StrictBool = Field(default=False, description=(
        "each result carries which query slice aligned with which document slice and how strongly "
        "(the alignment kernel's soft alignment)"))
    collection: CollectionName | None = Field(default=None, description="where `{\"id\"}` documents are")

    @model_validator(mode="after")
    def _documents(self) -> RerankRequest:
        if (self.documents is None) == (self.texts is None):
            raise ValueError("give 'documents' (or TEI's 'texts'), one of them")
        return self

    def items(self) -> list[Any]:
        return list(self.documents if self.documents is not None else self.texts or [])


class RerankedDocument(BaseModel):
    text: str | None = None
    id: str | None = None
    slices: list[dict[str, Any]] | None = None


class RerankResult(BaseModel):
    index: int
    relevance_score: float = Field(description="exp(s̄) in (0, 1]: the alignment kernel's normalised similarity")
    document: RerankedDocument | None = None
    explanation: Explanation | None = None


class RerankUsage(BaseModel):
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: RerankUsage


class ScoreRequest(Loose):
    """vLLM's /score: `text_1`/`text_2` (or `queries`/`documents`): one query against each
    document, or pairwise when both are lists of one length."""

    model_config = ConfigDict(extra="allow", json_schema_extra=one_of(
        {"allOf": [given("text_1"), given("text_2"), missing("queries"), missing("documents")]},
        {"allOf": [given("queries"), given("documents"), missing("text_1"), missing("text_2")]}))
    model: str | None = None
    text_1: RerankQuery | Annotated[list[RerankQuery], Field(min_length=1)] | None = None
    text_2: RerankDocument | Annotated[list[RerankDocument], Field(min_length=1)] | None = None
    queries: RerankQuery | Annotated[list[RerankQuery], Field(min_length=1)] | None = None
    documents: RerankDocument | Annotated[list[RerankDocument], Field(min_length=1)] | None = None
    collection: CollectionName | None = None

    @model_validator(mode="after")
    def _sides(self) -> ScoreRequest:
        first = (self.text_1 is not None, self.text_2 is not None)
        second = (self.queries is not None, self.documents is not None)
        if not ((all(first) and not any(second)) or (all(second) and not any(first))):
            raise ValueError("give 'text_1' and 'text_2', or 'queries' and 'documents'")
        return self

    def sides(self) -> tuple[list[Any], list[Any]]:
        a = self.text_1 if self.text_1 is not None else self.queries
        b = self.text_2 if self.text_2 is not None else self.documents
        return (a if isinstance(a, list) else [a]), (b if isinstance(b, list) else [b])


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    model: str
    data: list[ScoreData]
    usage: RerankUsage
