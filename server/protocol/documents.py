"""Documents: POST/PUT/GET/DELETE /documents, uploads, index statistics."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from .common import ID_PATTERN, Filters, SampleIn, SliceOut, Strict, given, one_of

# the largest paging offset: 2**53 - 1, the largest integer a JSON number (a double) holds exactly, so
# a client reading the schema's maximum as a float gets the same bound the server checks
MAX_OFFSET = 2**53 - 1


class DocumentIn(SampleIn):
    """POST /documents: a sample whose id is required."""

    id: str = Field(pattern=ID_PATTERN)


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
    collection: str = "default"
    backend: str | None = None


class CollectionInfo(BaseModel):
    name: str
    count: int = Field(description="documents")
    embedding_version: str
    backend: Literal["embedded", "postgres"]
    size_bytes: int
    dim: int


class CollectionList(BaseModel):
    collections: list[CollectionInfo]


class CollectionAck(BaseModel):
    name: str
    status: Literal["created", "exists", "deleted"]


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


class ScrollRequest(Strict):
    """POST /documents/scroll: the documents that match `filters` (all without), in the order
    they were stored, a page at a time."""

    filters: Filters | None = None
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    images: Literal["url", "base64"] = "url"


class ScrollResponse(BaseModel):
    documents: list[DocumentOut]
    next_offset: int | None = Field(default=None, description="the offset of the next page; absent: the last page")


class CountRequest(Strict):
    filters: Filters | None = None


class CountResponse(BaseModel):
    count: int


class DeleteRequest(Strict):
    """POST /documents/delete: by `filters`, by `ids` (unknown ones skipped), or `all: true`;
    one transaction. Empty filters are refused: every document goes only when asked by name."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=one_of(
        given("filters"), given("ids"), {"required": ["all"], "properties": {"all": {"const": True}}},
        allOf=[{"properties": {"filters": {"anyOf": [{"type": "null"}, {"type": "object", "minProperties": 1}]}}}]))

    filters: Filters | None = None
    ids: list[Annotated[str, Field(pattern=ID_PATTERN)]] | None = Field(default=None, min_length=1, max_length=10_000)
    all: StrictBool = Field(default=False, description="delete every document of the collection")

    @model_validator(mode="after")
    def _one_selector(self) -> DeleteRequest:
        if sum((self.filters is not None, self.ids is not None, self.all)) != 1:
            raise ValueError("give one of 'filters', 'ids' or 'all': true")
        if self.filters is not None and not self.filters:
            raise ValueError("empty filters would delete every document; to mean that, send 'all': true")
        return self


class DeleteResponse(BaseModel):
    deleted: int
