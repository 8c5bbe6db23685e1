"""What every endpoint family shares: samples parsed from the wire, vectors encoded for it,
stored documents' slices, citations, usage."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np

from index import Hit
from index.store import StoredDocument
from model.sample import Sample
from model.search import DEFAULT_COLLECTION

from .. import protocol as P
from ..engine import GenerationResult
from ..service import BadRequest, SugarService


async def parse_samples(service: SugarService, items: list[P.SampleIn], where: str) -> list[Sample]:
    if not items:
        raise BadRequest(where, "no samples")
    limit = service.settings.max_samples_per_request
    if len(items) > limit:
        raise BadRequest(where, f"{len(items)} samples exceed the limit of {limit}")
    return [await asyncio.to_thread(service.parse, s.raw(), f"{where}[{i}]") for i, s in enumerate(items)]


def encode_vector(v: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()
    return v.astype(float).tolist()


def slices_out(d: StoredDocument, images: str, collection: str | None = None) -> list[P.SliceOut]:
    """A stored document's slices on the wire: images as URLs of this server (of its collection)
    or inline base64."""
    out = []
    where = f"?collection={collection}" if collection and collection != DEFAULT_COLLECTION else ""
    for k, s in enumerate(d.slices):
        if s["type"] == "text":
            out.append(P.SliceOut(type="text", text=s["text"]))
        elif images == "base64":
            out.append(P.SliceOut(type="image", base64=base64.b64encode(d.images[s["hash"]]).decode()))
        else:
            out.append(P.SliceOut(type="image", url=f"/documents/{d.id}/images/{k}{where}"))
    return out


def usage(res: GenerationResult) -> P.Usage:
    return P.Usage(prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens,
                   total_tokens=res.prompt_tokens + res.completion_tokens)


def _str_or_none(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def citation(h: Hit) -> P.DocumentScore:
    """A used document as the generation responses carry it (id, score, source, title, page)."""
    m = h.metadata
    page = m.get("page")
    return P.DocumentScore(id=h.id, score=h.score, source=_str_or_none(m.get("source")),
                           title=_str_or_none(m.get("title")),
                           page=page if isinstance(page, int) and not isinstance(page, bool) else None)
