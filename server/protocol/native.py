"""Native inference: /embed, /retrieve, /generate — requests and responses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)

from model.search import DEFAULT_COLLECTION, SearchParams

from .common import (
    CollectionName,
    Explanation,
    Filters,
    LexicalWeight,
    RetrievalOptions,
    SampleIn,
    SearchMode,
    SliceOut,
    StoredRef,
    Strict,
    Temperature,
    Usage,
    given,
    missing,
    one_of,
)


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
    model_config = ConfigDict(extra="forbid", json_schema_extra=one_of(
        {"allOf": [given("query"), missing("queries")]}, {"allOf": [given("queries"), missing("query")]},
        **{"not": {"allOf": [given("collection"), given("collections")]}}))
    query: SampleIn | StoredRef | None = Field(default=None, description=(
        "a sample, or `{\"id\"}` of a stored document: more like it (its stored vectors and words; "
        "the document itself is left out)"))
    queries: list[SampleIn | StoredRef] | None = Field(default=None, min_length=1, description=(
        "the batch form (instead of `query`): one ranking per query, in `batch`"))
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
    score_threshold: StrictFloat | StrictInt | None = Field(default=None, description=(
        "leave out results whose `score` (the mode's ranking score) is below it"))
    group_by: Literal["source"] | None = Field(default=None, description=(
        "one result per `metadata.source` (the best-ranked chunk of each file; a document without "
        "a source is its own group), looking deeper than k_prime when needed"))
    explain: StrictBool = Field(default=False, description=(
        "each result carries `explanation`: which query slice aligned with which document slice and "
        "how strongly (the alignment kernel's soft alignment)"))

    @model_validator(mode="after")
    def _one_way_to_name_collections(self) -> RetrieveRequest:
        if self.collection is not None and self.collections is not None:
            raise ValueError("give either 'collection' or 'collections', not both")
        if (self.query is None) == (self.queries is None):
            raise ValueError("give 'query' or 'queries' (the batch form), one of them")
        return self

    def to_search_params(self) -> SearchParams:
        names = self.collections or [self.collection or DEFAULT_COLLECTION]
        return SearchParams(k=self.k, k_prime=self.k_prime, filters=self.filters, mode=self.mode,
                            lexical_weight=self.lexical_weight, with_images=self.images == "base64",
                            collections=tuple(dict.fromkeys(names)), group_by=self.group_by,
                            score_threshold=None if self.score_threshold is None else float(self.score_threshold))

    def all_queries(self) -> list[SampleIn | StoredRef]:
        return list(self.queries) if self.queries is not None else [self.query]  # type: ignore[list-item]


class RetrievedDocument(BaseModel):
    id: str
    score: float  # the mode's ranking score (hybrid: the fused score, relative score fusion)
    ann_score: float
    dense_score: float | None = None  # hybrid: the GA-kernel score
    lexical_score: float | None = None  # hybrid, lexical: BM25 (absent: no query word matched)
    metadata: dict[str, Any]
    slices: list[SliceOut]
    collection: str | None = None  # a search of several collections: where this one was found
    explanation: Explanation | None = None  # explain: true


class RetrieveResults(BaseModel):
    results: list[RetrievedDocument]


class RetrieveResponse(BaseModel):
    results: list[RetrievedDocument] | None = Field(default=None, description="the ranking of `query`")
    batch: list[RetrieveResults] | None = Field(default=None, description="`queries`: a ranking each, in order")


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
