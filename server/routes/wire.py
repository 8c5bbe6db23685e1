"""Converters from service/index types to wire schemas, shared by the routers."""

from __future__ import annotations

import asyncio
import base64

import numpy as np

from index import Hit
from index.store import StoredDocument
from model.sample import Sample

from .. import protocol as P
from ..service import BadRequest, SugarService


async def parse_samples(service: SugarService, items: list[P.SampleIn], where: str) -> list[Sample]:
    if not items:
        raise BadRequest(where, "no samples")
    limit = service.settings.max_samples_per_request
    if len(items) > limit:
        raise BadRequest(where, f"{len(items)} samples exceed the limit of {limit}")
    return [await asyncio.to_thread(service.parse, s.raw(), f"{where}[{i}]") for i, s in enumerate(items)]


def slices_out(d: StoredDocument, images: str) -> list[P.SliceOut]:
    out = []
    for k, s in enumerate(d.slices):
        if s["type"] == "text":
            out.append(P.SliceOut(type="text", text=s["text"]))
        elif images == "base64":
            out.append(P.SliceOut(type="image", base64=base64.b64encode(d.images[s["hash"]]).decode()))
        else:
            out.append(P.SliceOut(type="image", url=f"/documents/{d.id}/images/{k}"))
    return out


def retrieved(h: Hit, images: str) -> P.RetrievedDocument:
    return P.RetrievedDocument(id=h.id, score=h.score, ann_score=h.ann_score, dense_score=h.dense_score,
                               lexical_score=h.lexical_score, metadata=h.metadata,
                               slices=slices_out(h.document, images))  # type: ignore[arg-type]


def citation(h: Hit) -> dict:
    """A used document as the generation responses carry it (id, score, source, title, page)."""
    m = h.metadata
    page = m.get("page")
    return {"id": h.id, "score": h.score, "source": _str_or_none(m.get("source")),
            "title": _str_or_none(m.get("title")),
            "page": page if isinstance(page, int) and not isinstance(page, bool) else None}


def _str_or_none(v) -> str | None:
    return v if isinstance(v, str) else None


def encode_vector(v: np.ndarray, fmt: str):
    if fmt == "base64":
        return base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()
    return v.astype(float).tolist()
