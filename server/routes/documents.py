"""Document routes: create, upsert, list, get, images, delete; scroll, count and delete by filter."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Query, UploadFile
from fastapi.responses import Response

from index.ingest import SyncSummary

from .. import protocol as P
from ..deps import Caller, Svc
from ..errors import COMMON, responses
from ..service import BadRequest, NotFound
from ..serving.common import slices_out

router = APIRouter(tags=["documents"])
DocId = Annotated[str, Path(pattern=P.ID_PATTERN)]
# the collection a documents route works on (index/collections.py)
InCollection = Annotated[str, Query(pattern=P.COLLECTION_PATTERN, description="the collection (default: 'default')")]


@router.post("/documents", response_model=P.DocumentAck, status_code=201,
             responses=responses(*COMMON, 403, 404, 409, 422, 429))
async def create_document(doc: P.DocumentIn, service: Svc, caller: Caller,
                          collection: InCollection = "default") -> P.DocumentAck:
    caller.require(collection, "rw")
    service.collection(collection)  # 404 before the embedding work
    sample = await asyncio.to_thread(service.parse, doc.raw(), "document")
    [e] = await service.embed([sample])
    await service.store([sample], [e], upsert=False, collection=collection)
    return P.DocumentAck(id=doc.id, status="created")


UPLOAD_DOC = """Files as users have them: Markdown (images linked from it may be sent in the same
upload), HTML, PDF, PNG/JPEG/WebP/GIF images (a `name.txt`/`name.md` sent beside `name.png` is
its caption), plain text and JSONL documents. Each file is read, chunked at its structure and
stored under the source `upload:<file name>`: sending the same file again changes nothing
(`unchanged`), a new version replaces its chunks (`updated`). Every file is read before anything
is stored: if any cannot be read, the answer is 422 (`invalid_files`, each file with its reason)
and nothing is stored."""


def _upload_name(raw: str | None, k: int) -> str:
    name = (raw or "").replace("\\", "/").lstrip("/")
    if not name:
        raise BadRequest(f"files[{k}]", "a file part without a file name")
    if len(name) > 255 or any(ord(c) < 32 or c == "\x7f" for c in name) or ".." in name.split("/"):
        raise BadRequest(f"files[{k}]", f"file name {name[:80]!r} is not allowed (control characters, "
                         "'..' or over 255 characters)")
    if any(part in ("", ".") for part in name.split("/")):
        raise BadRequest(f"files[{k}]", f"file name {name[:80]!r} is not a usable name (an empty or '.' part)")
    return name


@router.post("/documents/upload", response_model=P.UploadResponse,
             responses=responses(*COMMON, 403, 404, 409, 422, 429),
             description=UPLOAD_DOC)
async def upload_documents(
    service: Svc,
    caller: Caller,
    files: Annotated[list[UploadFile], File(description="one or more files (repeat the part `files`)", min_length=1)],
    metadata: Annotated[str | None, Form(description="a JSON object added to every chunk's metadata")] = None,
    collection: InCollection = "default",
) -> P.UploadResponse:
    caller.require(collection, "rw")
    st = service.settings
    service.collection(collection)  # 404 before reading anything
    if len(files) > st.max_upload_files:
        raise BadRequest("files", f"{len(files)} files exceed the limit of {st.max_upload_files}")
    meta = None
    if metadata is not None:
        try:
            meta = P.check_json(json.loads(metadata))
        except RecursionError:
            raise BadRequest("metadata", f"nested deeper than {P.MAX_JSON_DEPTH} levels") from None
        except (json.JSONDecodeError, ValueError) as e:
            raise BadRequest("metadata", f"not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise BadRequest("metadata", "must be a JSON object")
    named: list[tuple[str, bytes]] = []
    for k, f in enumerate(files):
        name = _upload_name(f.filename, k)
        data = await f.read(st.max_upload_file_bytes + 1)
        if len(data) > st.max_upload_file_bytes:
            raise BadRequest(f"files[{k}]", f"{name}: larger than the limit of {st.max_upload_file_bytes} bytes")
        if any(n == name for n, _ in named):
            raise BadRequest(f"files[{k}]", f"{name}: the same file name twice in one upload")
        named.append((name, data))
    results = await service.upload(named, meta, collection)
    out = [P.UploadedFile(file=r.source.removeprefix("upload:"),
                          **{k: v for k, v in r.to_dict().items() if k in P.UploadedFile.model_fields})
           for r in results]
    totals = SyncSummary(results).to_dict()
    summary = P.UploadSummary(**{k: v for k, v in totals.items() if k in P.UploadSummary.model_fields})
    return P.UploadResponse(ids=[i for f in out for i in f.ids], files=out, summary=summary)


@router.put("/documents/{doc_id}", response_model=P.DocumentAck, responses=responses(*COMMON, 403, 404, 422, 429))
async def put_document(doc_id: DocId, doc: P.SampleIn, service: Svc, caller: Caller,
                       collection: InCollection = "default") -> P.DocumentAck:
    caller.require(collection, "rw")
    if doc.id is not None and doc.id != doc_id:
        raise BadRequest("id", f"body id {doc.id!r} differs from the path id {doc_id!r}")
    service.collection(collection)
    raw = {**doc.raw(), "id": doc_id}
    sample = await asyncio.to_thread(service.parse, raw, "document")
    [e] = await service.embed([sample])
    await service.store([sample], [e], upsert=True, collection=collection)
    return P.DocumentAck(id=doc_id, status="updated")


@router.get("/index/stats", response_model=P.IndexStats, responses=responses(401, 403, 404, 422))
async def index_stats(service: Svc, caller: Caller, collection: InCollection = "default") -> P.IndexStats:
    caller.require(collection, "r")
    stats = await asyncio.to_thread(service.collection(collection).stats)
    return P.IndexStats(**{k: v for k, v in stats.items() if k in P.IndexStats.model_fields}, collection=collection)


@router.get("/documents", response_model=P.DocumentList, responses=responses(401, 403, 404, 422))
async def list_documents(service: Svc, offset: Annotated[int, Query(ge=0, le=P.MAX_OFFSET)] = 0,
                         limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                         collection: InCollection = "default", *, caller: Caller) -> P.DocumentList:
    caller.require(collection, "r")
    index = service.collection(collection)
    ids = await asyncio.to_thread(index.list_ids, offset, limit)
    return P.DocumentList(ids=ids, offset=offset, limit=limit, total=index.count())


@router.post("/documents/scroll", response_model=P.ScrollResponse, response_model_exclude_none=True,
             responses=responses(*COMMON, 403, 404, 422))
async def scroll_documents(req: P.ScrollRequest, service: Svc, caller: Caller,
                           collection: InCollection = "default") -> P.ScrollResponse:
    """The documents that match `filters` (all without), in the order they were stored: `limit`
    from `offset`, and `next_offset` for the next page (absent: none left)."""
    caller.require(collection, "r")
    index = service.collection(collection)
    docs, nxt = await asyncio.to_thread(index.scroll, req.filters, req.offset, req.limit, req.images == "base64")
    return P.ScrollResponse(documents=[P.DocumentOut(id=d.id, metadata=d.metadata,
                                                     slices=slices_out(d, req.images, collection),
                                                     embedding_version=d.embedding_version) for d in docs],
                            next_offset=nxt)


@router.post("/documents/count", response_model=P.CountResponse, responses=responses(*COMMON, 403, 404, 422))
async def count_documents(req: P.CountRequest, service: Svc, caller: Caller,
                          collection: InCollection = "default") -> P.CountResponse:
    """How many documents match `filters` (all without)."""
    caller.require(collection, "r")
    index = service.collection(collection)
    return P.CountResponse(count=await asyncio.to_thread(index.count_matching, req.filters))


@router.post("/documents/delete", response_model=P.DeleteResponse, responses=responses(*COMMON, 403, 404, 422))
async def delete_documents(req: P.DeleteRequest, service: Svc, caller: Caller,
                           collection: InCollection = "default") -> P.DeleteResponse:
    """Delete the documents that match `filters`, those of `ids` (unknown ones skipped), or with
    `all: true` every one, in one transaction; `deleted`: how many went. Empty filters are
    refused (they would match every document)."""
    caller.require(collection, "rw")
    index = service.collection(collection)
    n = await asyncio.to_thread(index.delete_matching, {} if req.all else req.filters, req.ids)
    return P.DeleteResponse(deleted=n)


@router.get("/documents/{doc_id}", response_model=P.DocumentOut, response_model_exclude_none=True,
            responses=responses(401, 403, 404, 422))
async def get_document(doc_id: str, service: Svc,
                       images: Annotated[str, Query(pattern="^(url|base64)$")] = "url",
                       collection: InCollection = "default", *, caller: Caller) -> P.DocumentOut:
    caller.require(collection, "r")
    d = await service.get_document(doc_id, collection)
    return P.DocumentOut(id=d.id, metadata=d.metadata, slices=slices_out(d, images, collection),
                         embedding_version=d.embedding_version)


@router.get("/documents/{doc_id}/images/{position}", response_class=Response, responses={
    200: {"content": {"image/png": {}}, "description": "the stored image (PNG)"},
    **responses(401, 403, 404, 422)})
async def get_image(doc_id: str, position: int, service: Svc, caller: Caller, collection: InCollection = "default"):
    caller.require(collection, "r")
    d = await service.get_document(doc_id, collection)
    if not 0 <= position < len(d.slices) or d.slices[position]["type"] != "image":
        raise NotFound(f"document {doc_id!r} has no image at position {position}")
    return Response(d.images[d.slices[position]["hash"]], media_type="image/png")


@router.delete("/documents/{doc_id}", response_model=P.DocumentAck, responses=responses(401, 403, 404, 422))
async def delete_document(doc_id: str, service: Svc, caller: Caller,
                          collection: InCollection = "default") -> P.DocumentAck:
    caller.require(collection, "rw")
    await service.delete_document(doc_id, collection)
    return P.DocumentAck(id=doc_id, status="deleted")
