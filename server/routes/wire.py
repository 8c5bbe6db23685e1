"""Request-side helpers shared by the routers (response builders live in server.protocol)."""

from __future__ import annotations

import asyncio
import base64

import numpy as np

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


def encode_vector(v: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()
    return v.astype(float).tolist()
