"""Server-sent events for streamed generation (native and OpenAI chunk formats).

A stream is admitted before its response exists (`sse`: a full queue is a 429,
not an empty 200), holds its generation slot until the response ends however
it ends, and a failure mid-stream ends with an error event, never a silent stop.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable

from fastapi.responses import StreamingResponse

from . import protocol as P
from .engine import EngineError, GenerationResult, complete_chars
from .metrics import Metrics
from .service import RagPlan, SugarService


class AdmittedStream(StreamingResponse):
    """An SSE response holding a generation slot taken before it was built; the slot is
    released when the response ends (finished, failed, client gone)."""

    def __init__(self, gen: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(gen, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._release = release

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def sse(service: SugarService, stream: Callable[[], AsyncIterator[str]]) -> StreamingResponse:
    """Admit a streamed generation: acquire a slot now (Overloaded -> 429), then stream."""
    service.generations.acquire()
    try:
        return AdmittedStream(stream(), service.generations.release)
    except BaseException:
        service.generations.release()
        raise


def _error_event(e: Exception) -> str:
    kind = "engine_unavailable" if isinstance(e, EngineError) else "generation_failed"
    return f"data: {json.dumps({'error': {'type': kind, 'message': str(e)}})}\n\n"


async def native_stream(service: SugarService, plan: RagPlan, max_tokens: int, temperature: float,
                        t0: float, metrics: Metrics) -> AsyncIterator[str]:
    result: list[GenerationResult] = []
    t1 = time.perf_counter()
    try:
        async for delta in complete_chars(service.engine.stream(plan.messages, max_tokens, temperature, result,
                                                                 plan.prepared, plan.abstain)):
            yield f"data: {json.dumps({'delta': delta})}\n\n"
        res = result[0]
        metrics.tokens(res.completion_tokens, time.perf_counter() - t1)
        final = P.generate_response(plan, res, P.timings(plan, t0, t1))
        yield f"data: {json.dumps({'done': True, **final.model_dump()})}\n\n"
    except Exception as e:  # noqa: BLE001 - the client learns the stream failed, in-band
        yield _error_event(e)


async def openai_stream(service: SugarService, plan: RagPlan, max_tokens: int, temperature: float,
                        cid: str, created: int, retrieved_docs: list[P.DocumentScore], include_usage: bool,
                        metrics: Metrics) -> AsyncIterator[str]:
    name = service.settings.served_model_name
    result: list[GenerationResult] = []

    def chunk(delta: P.ChatDelta | None, finish=None, **extra) -> str:
        choices = [P.ChatChunkChoice(delta=delta, finish_reason=finish)] if delta is not None else []
        return P.ChatCompletionChunk(id=cid, created=created, model=name, choices=choices, **extra).event()

    t1 = time.perf_counter()
    try:
        yield chunk(P.ChatDelta(role="assistant", content=""), retrieved=retrieved_docs)
        async for delta in complete_chars(service.engine.stream(plan.messages, max_tokens, temperature, result,
                                                                 plan.prepared, plan.abstain)):
            yield chunk(P.ChatDelta(content=delta))
        res = result[0]
        metrics.tokens(res.completion_tokens, time.perf_counter() - t1)
        yield chunk(P.ChatDelta(), P.finish_reason(res), abstained=res.abstained or None)
        if include_usage:
            yield chunk(None, usage=P.usage(res))
        yield "data: [DONE]\n\n"
    except Exception as e:  # noqa: BLE001 - the client learns the stream failed, in-band
        yield _error_event(e)
