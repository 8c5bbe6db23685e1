"""/retrieve and /generate: their responses and the stream of /generate."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from index import Hit

from .. import protocol as P
from ..engine import GenerationResult, complete_chars
from ..metrics import Metrics
from ..service import RagPlan, SugarService
from .common import citation, slices_out, usage
from .sse import error_event, event


def retrieved(h: Hit, images: str, multi: bool = False) -> P.RetrievedDocument:
    return P.RetrievedDocument(id=h.id, score=h.score, ann_score=h.ann_score, dense_score=h.dense_score,
                               lexical_score=h.lexical_score, metadata=h.metadata,
                               slices=slices_out(h.document, images, h.collection),  # type: ignore[arg-type]
                               collection=h.collection if multi else None,
                               explanation=P.Explanation(**h.explanation) if h.explanation else None)


def timings(plan: RagPlan, t0: float, t1: float) -> dict[str, float]:
    """Milliseconds: retrieval, generation (since `t1`), total (since `t0`); perf_counter times."""
    now = time.perf_counter()
    return {"retrieval_ms": plan.retrieval_ms, "generation_ms": (now - t1) * 1e3, "total_ms": (now - t0) * 1e3}


def generate_response(plan: RagPlan, res: GenerationResult, times: dict[str, float]) -> P.GenerateResponse:
    """The answer of /generate: the JSON response, and (with "done": true) the stream's last event."""
    return P.GenerateResponse(text=res.text, documents=[citation(h) for h in plan.used],
                              dropped_documents=[citation(h) for h in plan.dropped], usage=usage(res),
                              timings=times, finish_reason=res.finish_reason, abstained=res.abstained)


async def generate_stream(service: SugarService, plan: RagPlan, max_tokens: int, temperature: float,
                          t0: float, metrics: Metrics) -> AsyncIterator[str]:
    """SSE of /generate: `{"delta"}` events, then `{"done": true, ...the JSON response}`."""
    t1 = time.perf_counter()
    try:
        async for item in complete_chars(service.stream(plan, max_tokens, temperature)):
            if isinstance(item, GenerationResult):
                metrics.tokens(item.completion_tokens, time.perf_counter() - t1)
                final = generate_response(plan, item, timings(plan, t0, t1))
                yield event({"done": True, **final.model_dump()})
            else:
                yield event({"delta": item})
    except Exception as e:  # noqa: BLE001 - the client learns the stream failed, in-band
        yield error_event(e)
