"""Documents: POST/PUT/GET/DELETE /documents, uploads, index statistics."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .common import ID_PATTERN, SampleIn, SliceOut


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
