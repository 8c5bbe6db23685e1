"""/v1: chat messages into samples, the chat completion, its stream, embeddings inputs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from model.sample import Sample

from .. import protocol as P
from ..engine import GenerationResult, complete_chars
from ..metrics import Metrics
from ..service import BadRequest, RagPlan, SugarService
from .common import usage
from .sse import DONE, error_event, event


def finish_reason(res: GenerationResult) -> Literal["stop", "length"]:
    return "length" if res.finish_reason == "length" else "stop"


def chunk_event(c: P.ChatCompletionChunk) -> str:
    """One streamed chunk as OpenAI sends it: None fields of the delta and absent extras left
    out (a choice's `finish_reason` stays, null until the last)."""
    body = c.model_dump(exclude={k for k in ("retrieved", "abstained") if getattr(c, k) is None})
    if c.usage is None:
        body.pop("usage")
    for ch in body["choices"]:
        ch["delta"] = {k: v for k, v in ch["delta"].items() if v is not None}
    return event(body)


def _image(url: str) -> dict[str, str]:
    """An image slice of a data URL (inline) or a URL (fetched under the allow-list)."""
    return {"type": "image", "base64": url} if url.startswith("data:") else {"type": "image", "url": url}


def content_sample_raw(parts: list[Any]) -> dict[str, Any]:
    """Chat content parts (text, `image_url` with a data URL or a URL) as a sample's raw form."""
    slices = []
    for part in parts:
        if isinstance(part, P.ChatTextPart):
            slices.append({"type": "text", "text": part.text})
        else:
            url = part.image_url.url
            slices.append(_image(url))
    return {"slices": slices}


def embedding_inputs(req: P.EmbeddingsRequest) -> tuple[list[dict[str, Any]], list[str]]:
    """/v1/embeddings' inputs as raw samples, each with the field it came from: strings (text, or
    images with `modality: "image"`), Sugar samples, or vLLM's `messages` as one sample."""
    if req.messages is not None:
        slices = [s for m in req.messages for s in
                  (content_sample_raw(m.content)["slices"] if not isinstance(m.content, str)
                   else [{"type": "text", "text": m.content}])]
        return [{"slices": slices}], ["messages"]
    items: list[str | P.SampleIn] = [req.input] if isinstance(req.input, str) else list(req.input or [])
    raws = []
    for x in items:
        if isinstance(x, P.SampleIn):
            raws.append(x.raw())
        elif req.modality == "image":
            raws.append({"slices": [_image(x)]})
        else:
            raws.append({"slices": [{"type": "text", "text": x}]})
    return raws, [f"input[{i}]" for i in range(len(raws))]


async def chat_inputs(service: SugarService, req: P.ChatCompletionRequest):
    """(history as (role, parts), the last user message as the retrieval query)."""
    converted: list[tuple[str, Sample]] = []
    for i, m in enumerate(req.messages):
        where = f"messages[{i}].content"
        raw = ({"slices": [{"type": "text", "text": m.content}]} if isinstance(m.content, str)
               else content_sample_raw(m.content))
        role = "system" if m.role == "developer" else m.role
        converted.append((role, await asyncio.to_thread(service.parse, raw, where)))
    last_user = max((i for i, (r, _) in enumerate(converted) if r == "user"), default=None)
    if last_user is None:
        raise BadRequest("messages", "no user message")
    history = [(r, [s.text if s.type == "text" else s.image for s in smp.slices])
               for r, smp in converted[:last_user]]
    return history, converted[last_user][1]


def chat_completion(cid: str, created: int, model: str, res: GenerationResult,
                    retrieved: list[P.DocumentScore]) -> P.ChatCompletion:
    return P.ChatCompletion(id=cid, created=created, model=model,
                            choices=[P.ChatChoice(message=P.ChatResponseMessage(content=res.text),
                                                  finish_reason=finish_reason(res))],
                            usage=usage(res), retrieved=retrieved, abstained=res.abstained)


async def chat_stream(service: SugarService, plan: RagPlan, max_tokens: int, temperature: float,
                      cid: str, created: int, retrieved: list[P.DocumentScore], include_usage: bool,
                      metrics: Metrics) -> AsyncIterator[str]:
    name = service.settings.served_model_name

    def chunk(delta: P.ChatDelta | None, finish=None, **extra) -> str:
        choices = [P.ChatChunkChoice(delta=delta, finish_reason=finish)] if delta is not None else []
        return chunk_event(P.ChatCompletionChunk(id=cid, created=created, model=name, choices=choices, **extra))

    t1 = time.perf_counter()
    try:
        yield chunk(P.ChatDelta(role="assistant", content=""), retrieved=retrieved)
        async for item in complete_chars(service.stream(plan, max_tokens, temperature)):
            if not isinstance(item, GenerationResult):
                yield chunk(P.ChatDelta(content=item))
                continue
            metrics.tokens(item.completion_tokens, time.perf_counter() - t1)
            yield chunk(P.ChatDelta(), finish_reason(item), abstained=item.abstained or None)
            if include_usage:
                yield chunk(None, usage=usage(item))
        yield DONE
    except Exception as e:  # noqa: BLE001 - the client learns the stream failed, in-band
        yield error_event(e)
