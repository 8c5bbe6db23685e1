"""Document routes: create, upsert, list, get, images, delete."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import Response

from .. import protocol as P
from ..deps import Svc
from ..errors import COMMON, responses
from ..service import BadRequest, NotFound
from .wire import slices_out

router = APIRouter(tags=["documents"])
DocId = Annotated[str, Path(pattern=P.ID_PATTERN)]


@router.post("/documents", response_model=P.DocumentAck, status_code=201,
             responses=responses(*COMMON, 409, 422, 429))
async def create_document(doc: P.DocumentIn, service: Svc) -> P.DocumentAck:
    sample = await asyncio.to_thread(service.parse, doc.raw(), "document")
    [e] = await service.embed([sample])
    await service.store([sample], [e], upsert=False)
    return P.DocumentAck(id=doc.id, status="created")


@router.put("/documents/{doc_id}", response_model=P.DocumentAck, responses=responses(*COMMON, 422, 429))
async def put_document(doc_id: DocId, doc: P.SampleIn, service: Svc) -> P.DocumentAck:
    if doc.id is not None and doc.id != doc_id:
        raise BadRequest("id", f"body id {doc.id!r} differs from the path id {doc_id!r}")
    raw = {**doc.raw(), "id": doc_id}
    sample = await asyncio.to_thread(service.parse, raw, "document")
    [e] = await service.embed([sample])
    await service.store([sample], [e], upsert=True)
    return P.DocumentAck(id=doc_id, status="updated")


@router.get("/documents", response_model=P.DocumentList, responses=responses(401, 422))
async def list_documents(service: Svc, offset: Annotated[int, Query(ge=0, le=2**63 - 1)] = 0,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> P.DocumentList:
    ids = await asyncio.to_thread(service.index.list_ids, offset, limit)
    return P.DocumentList(ids=ids, offset=offset, limit=limit, total=service.index.count())


@router.get("/documents/{doc_id}", response_model=P.DocumentOut, response_model_exclude_none=True,
            responses=responses(401, 404, 422))
async def get_document(doc_id: str, service: Svc,
                       images: Annotated[str, Query(pattern="^(url|base64)$")] = "url") -> P.DocumentOut:
    d = await service.get_document(doc_id)
    return P.DocumentOut(id=d.id, metadata=d.metadata, slices=slices_out(d, images),
                         embedding_version=d.embedding_version)


@router.get("/documents/{doc_id}/images/{position}", response_class=Response, responses={
    200: {"content": {"image/png": {}}, "description": "the stored image (PNG)"},
    **responses(401, 404, 422)})
async def get_image(doc_id: str, position: int, service: Svc):
    d = await service.get_document(doc_id)
    if not 0 <= position < len(d.slices) or d.slices[position]["type"] != "image":
        raise NotFound(f"document {doc_id!r} has no image at position {position}")
    return Response(d.images[d.slices[position]["hash"]], media_type="image/png")


@router.delete("/documents/{doc_id}", response_model=P.DocumentAck, responses=responses(401, 404))
async def delete_document(doc_id: str, service: Svc) -> P.DocumentAck:
    await service.delete_document(doc_id)
    return P.DocumentAck(id=doc_id, status="deleted")
