"""Server-sent events for streamed generation.

A stream is admitted before its response exists (`sse`: a full queue is a 429, not an empty
200), holds its generation slot until the response ends however it ends, and a failure
mid-stream ends with an error event, never a silent stop.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from ..engine import EngineError
from ..service import SugarService


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


def event(body: Any) -> str:
    """One server-sent event of a JSON body."""
    return f"data: {json.dumps(body)}\n\n"


def error_event(e: Exception) -> str:
    kind = "engine_unavailable" if isinstance(e, EngineError) else "generation_failed"
    return event({"error": {"type": kind, "message": str(e)}})


DONE = "data: [DONE]\n\n"
