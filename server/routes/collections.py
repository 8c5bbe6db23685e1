"""Collections: PUT (create), GET (list, one), DELETE (index/collections.py)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Path, Response

from index.collections import CollectionNotFound, CollectionRefused

from .. import protocol as P
from ..deps import Caller, Svc
from ..errors import responses
from ..service import BadRequest, Conflict, NotFound

router = APIRouter(tags=["collections"])
Name = Annotated[str, Path(pattern=P.COLLECTION_PATTERN, description="the collection's name")]


def _info(service, name: str) -> P.CollectionInfo:
    try:
        return P.CollectionInfo(**service.collections.info(name))
    except CollectionNotFound as e:
        raise NotFound(str(e)) from None


@router.put("/collections/{name}", response_model=P.CollectionAck, status_code=201,
            responses={200: {"model": P.CollectionAck, "description": "the collection existed already"},
                       **responses(401, 403, 422)})
async def create_collection(name: Name, service: Svc, response: Response, caller: Caller) -> P.CollectionAck:
    """Create an empty collection (embedded by the served checkpoint); 200 when it exists."""
    caller.require(name, "admin")
    try:
        created = await asyncio.to_thread(service.collections.create, name)
    except CollectionRefused as e:
        raise BadRequest("name", str(e)) from None
    if not created:
        response.status_code = 200
    return P.CollectionAck(name=name, status="created" if created else "exists")


@router.get("/collections", response_model=P.CollectionList, responses=responses(401))
async def list_collections(service: Svc, caller: Caller) -> P.CollectionList:
    """The collections this API key may read (all of them for the admin key)."""
    names = [n for n in await asyncio.to_thread(service.collections.names) if caller.may(n, "r")]
    infos = []
    for name in names:
        try:
            infos.append(await asyncio.to_thread(_info, service, name))
        except NotFound:  # deleted meanwhile (another replica)
            continue
    return P.CollectionList(collections=infos)


@router.get("/collections/{name}", response_model=P.CollectionInfo, responses=responses(401, 403, 404, 422))
async def get_collection(name: Name, service: Svc, caller: Caller) -> P.CollectionInfo:
    caller.require(name, "r")
    return await asyncio.to_thread(_info, service, name)


@router.delete("/collections/{name}", response_model=P.CollectionAck, responses=responses(401, 403, 404, 409, 422))
async def delete_collection(name: Name, service: Svc, caller: Caller) -> P.CollectionAck:
    """Delete a collection and every document in it, at once (the default one cannot be)."""
    caller.require(name, "admin")
    try:
        await asyncio.to_thread(service.collections.delete, name)
    except CollectionNotFound as e:
        raise NotFound(str(e)) from None
    except CollectionRefused as e:
        raise Conflict(str(e), "name") from None
    return P.CollectionAck(name=name, status="deleted")
