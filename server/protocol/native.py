"""Native inference: /embed, /retrieve, /generate — requests, responses, and the builders the
JSON answer and the stream's final event share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, StrictBool, model_validator

from model.search import DEFAULT_COLLECTION, SearchParams

from .common import (
    CollectionName,
    Filters,
    LexicalWeight,
    RetrievalOptions,
    SampleIn,
    SearchMode,
    SliceOut,
    Strict,
    Temperature,
    Usage,
    slices_out,
)

if TYPE_CHECKING:
    from index import Hit

    from ..engine import GenerationResult
    from ..service import RagPlan


class EmbedRequest(Strict):
    samples: list[SampleIn] = Field(min_length=1)
    store: StrictBool = False
    upsert: StrictBool = False
    collection: CollectionName | None = None  # with store: where the samples go (default: "default")


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
    collection: CollectionName | None = None  # default: "default"
    collections: list[CollectionName] | None = Field(default=None, min_length=1, description=(
        "search several collections at once (instead of `collection`): one ranking, each result "
        "naming its collection"))

    @model_validator(mode="after")
    def _one_way_to_name_collections(self) -> RetrieveRequest:
        if self.collection is not None and self.collections is not None:
            raise ValueError("give either 'collection' or 'collections', not both")
        return self

    def to_search_params(self) -> SearchParams:
        names = self.collections or [self.collection or DEFAULT_COLLECTION]
        return SearchParams(k=self.k, k_prime=self.k_prime, filters=self.filters, mode=self.mode,
                            lexical_weight=self.lexical_weight, with_images=self.images == "base64",
                            collections=tuple(dict.fromkeys(names)))


class RetrievedDocument(BaseModel):
    id: str
    score: float  # the mode's ranking score (hybrid: the fused score, relative score fusion)
    ann_score: float
    dense_score: float | None = None  # hybrid: the GA-kernel score
    lexical_score: float | None = None  # hybrid, lexical: BM25 (absent: no query word matched)
    metadata: dict[str, Any]
    slices: list[SliceOut]
    collection: str | None = None  # a search of several collections: where this one was found


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


class GenerateResponse(BaseModel):
    text: str
    documents: list[DocumentScore]
    dropped_documents: list[DocumentScore] = Field(default_factory=list)
    usage: Usage
    timings: dict[str, float]
    finish_reason: str = Field(description='"stop", "length", "cancelled", or "abstained": the retrieved '
                               'documents cannot answer (the checkpoint\'s calibrated abstention), `text` is then '
                               'the fixed answer "not in the documents"')
    abstained: bool = False


def usage(res: GenerationResult) -> Usage:
    return Usage(prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens,
                 total_tokens=res.prompt_tokens + res.completion_tokens)


def citation(h: Hit) -> DocumentScore:
    """A used document as the generation responses carry it (id, score, source, title, page)."""
    m = h.metadata
    page = m.get("page")
    return DocumentScore(id=h.id, score=h.score, source=_str_or_none(m.get("source")),
                         title=_str_or_none(m.get("title")),
                         page=page if isinstance(page, int) and not isinstance(page, bool) else None)


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def retrieved(h: Hit, images: str, multi: bool = False) -> RetrievedDocument:
    return RetrievedDocument(id=h.id, score=h.score, ann_score=h.ann_score, dense_score=h.dense_score,
                             lexical_score=h.lexical_score, metadata=h.metadata,
                             slices=slices_out(h.document, images, h.collection),  # type: ignore[arg-type]
                             collection=h.collection if multi else None)


def timings(plan: RagPlan, t0: float, t1: float) -> dict[str, float]:
    """Milliseconds: retrieval, generation (since `t1`), total (since `t0`); perf_counter times."""
    import time

    now = time.perf_counter()
    return {"retrieval_ms": plan.retrieval_ms, "generation_ms": (now - t1) * 1e3, "total_ms": (now - t0) * 1e3}


def generate_response(plan: RagPlan, res: GenerationResult, timings: dict[str, float]) -> GenerateResponse:
    """The answer of /generate: the JSON response, and (with "done": true) the stream's last event."""
    return GenerateResponse(text=res.text, documents=[citation(h) for h in plan.used],
                            dropped_documents=[citation(h) for h in plan.dropped], usage=usage(res),
                            timings=timings, finish_reason=res.finish_reason, abstained=res.abstained)
