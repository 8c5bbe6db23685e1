"""Generation engines behind one interface: in-process transformers, or a vLLM server.

Both take chat messages as (role, parts) — parts are text or PIL images —
and render them with the same template (model.prompts in process; the
tokenizer's chat template, identical by test, inside vLLM), so greedy output
is the same text for the same request. The engine knows tokens; formatting
of HTTP responses lives in the app.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from model.prompts import Part, chat_prompt
from model.sample import encode_png_base64
from model.sugar import SugarModel

logger = logging.getLogger(__name__)

Messages = Sequence[tuple[str, Sequence[Part]]]


class EngineError(RuntimeError):
    """The engine cannot serve now (down, poisoned, timed out): a 503."""


@dataclass
class GenerationResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "cancelled" | "abstained"
    abstained: bool = False  # the documents cannot answer: `text` is the fixed abstention answer

    def __post_init__(self) -> None:
        # a multi-byte character cut by max_tokens decodes as U+FFFD; engines render
        # the partial bytes differently, so the final text drops them
        self.text = self.text.strip().rstrip("\ufffd").strip()


Streamed = AsyncIterator["str | GenerationResult"]  # text deltas, then the final result


async def complete_chars(stream: Streamed) -> Streamed:
    """Hold back a trailing U+FFFD (a multi-byte character not complete yet) until the
    next delta completes it; at the end drop it, as the final text does. The final result
    passes through."""
    held = ""
    async for d in stream:
        if isinstance(d, GenerationResult):
            yield d
            continue
        d = held + d
        kept = d.rstrip("\ufffd")
        held = d[len(kept):]
        if kept:
            yield kept


@dataclass(frozen=True)
class Abstain:
    """A checkpoint's abstention for one generation (SugarConfig.abstain_threshold): before
    decoding, the margin of the answer's first token `token` (its log-probability minus the
    best other token's); at or above `threshold` the answer is `text` (finish_reason
    "abstained"), below it the token is barred from the decoding, so the two never disagree.
    `forced`: abstain without asking the model (the documents hold none of the question's rarer
    words: SugarConfig.abstain_evidence_threshold); `threshold` None: no margin check."""

    token: int
    threshold: float | None
    text: str
    forced: bool = False

    def abstained(self, prompt_tokens: int) -> GenerationResult:
        return GenerationResult(self.text, prompt_tokens, 0, "abstained", abstained=True)


@dataclass
class Prepared:
    """A prompt rendered and tokenised once (its images processed): what the service
    measured against the context budget is what the engine decodes from."""

    tokens: int
    batch: Any  # the backbone's EncodedBatch


class Engine(ABC):
    name: str
    decodes_our_tokens = False  # True: generates from the ids `prepare_ids` gets (in process)

    @abstractmethod
    def max_context(self) -> int: ...

    def prepare(self, messages: Messages) -> Prepared | None:
        """Tokenise the prompt here, once, when this engine decodes from our tokens
        (in process); None when the engine tokenises itself (vLLM)."""
        return None

    def prepare_ids(self, ids: Sequence[int], images: Sequence[Any]) -> Prepared | None:
        """The same from token ids the service already has (cut from one tokenisation of
        the longest prompt); None when the engine tokenises itself."""
        return None

    @abstractmethod
    async def generate(self, messages: Messages, max_tokens: int, temperature: float,
                       prepared: Prepared | None = None, abstain: Abstain | None = None) -> GenerationResult: ...

    @abstractmethod
    def stream(self, messages: Messages, max_tokens: int, temperature: float,
               prepared: Prepared | None = None, abstain: Abstain | None = None) -> Streamed:
        """Yield text deltas, then the final GenerationResult (vLLM's RequestOutput style: the
        last item carries finish_reason and counts); an abstention streams its fixed text as
        one delta. A stream closed early yields no result (decoding stops)."""

    @abstractmethod
    async def check(self) -> None:
        """Raise EngineError unless the engine can generate (a tiny canary)."""

    async def close(self) -> None:
        return None


class HFEngine(Engine):
    """transformers `generate` with KV cache on one worker thread; streaming by TextIteratorStreamer."""

    name = "hf"
    decodes_our_tokens = True

    def __init__(self, model: SugarModel) -> None:
        self.model = model
        self.backbone = model.backbone
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-generate")
        self.poisoned: str | None = None  # set to make the engine fail (tests, ops drills)

    def max_context(self) -> int:
        return self.backbone.max_positions

    def _prompt(self, messages: Messages):
        return chat_prompt(messages, self.model.config.prompts, eos=self.backbone.eos_token)

    def prepare(self, messages: Messages) -> Prepared:
        batch = self.backbone.encode([self._prompt(messages)], padding_side="left")
        return Prepared(int(batch.input_ids.shape[1]), batch)

    def prepare_ids(self, ids: Sequence[int], images: Sequence[Any]) -> Prepared:
        return Prepared(len(ids), self.backbone.batch_from_ids(ids, images))

    def _run(self, messages: Messages, max_tokens: int, temperature: float, streamer=None,
             cancel: threading.Event | None = None, prepared: Prepared | None = None,
             abstain: Abstain | None = None) -> GenerationResult:
        if self.poisoned:
            raise EngineError(self.poisoned)
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        from model.sugar import abstain_margin

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):  # noqa: ARG002
                return bool(cancel is not None and cancel.is_set())

        batch = (prepared or self.prepare(messages)).batch.to(self.backbone.device)
        sampling = temperature > 0
        barred = {}
        if abstain is not None and abstain.forced:
            return abstain.abstained(int(batch.input_ids.shape[1]))
        if abstain is not None and abstain.threshold is not None:
            with torch.no_grad():
                logits = self.backbone.model(**batch.model_inputs()).logits[:, -1]
            if float(abstain_margin(logits, abstain.token)[0]) >= abstain.threshold:
                return abstain.abstained(int(batch.input_ids.shape[1]))
            barred = {"bad_words_ids": [[abstain.token]]}
        with torch.no_grad():
            out = self.backbone.model.generate(
                **batch.model_inputs(), max_new_tokens=max_tokens, do_sample=sampling,
                temperature=temperature if sampling else None, top_p=None, top_k=None,
                pad_token_id=self.backbone.tokenizer.pad_token_id,
                eos_token_id=self.backbone.tokenizer.eos_token_id, streamer=streamer,
                stopping_criteria=StoppingCriteriaList([Cancelled()]), **barred,
            )
        new = out[0, batch.input_ids.shape[1]:]
        eos = self.backbone.tokenizer.eos_token_id
        n = len(new)
        stopped = bool(n and int(new[-1]) == eos)
        text = self.backbone.tokenizer.decode(new, skip_special_tokens=True).strip()
        reason = "cancelled" if cancel is not None and cancel.is_set() else ("stop" if stopped else "length")
        return GenerationResult(text, int(batch.input_ids.shape[1]), n, reason)

    async def generate(self, messages: Messages, max_tokens: int, temperature: float,
                       prepared: Prepared | None = None, abstain: Abstain | None = None) -> GenerationResult:
        loop = asyncio.get_running_loop()
        cancel = threading.Event()
        try:
            return await loop.run_in_executor(self.pool, self._run, messages, max_tokens, temperature, None, cancel,
                                              prepared, abstain)
        except asyncio.CancelledError:
            cancel.set()
            raise

    async def stream(self, messages: Messages, max_tokens: int, temperature: float,
                     prepared: Prepared | None = None, abstain: Abstain | None = None) -> Streamed:
        from transformers import TextIteratorStreamer

        streamer = TextIteratorStreamer(self.backbone.tokenizer, skip_prompt=True, skip_special_tokens=True,
                                        timeout=0.05)
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.pool, self._run, messages, max_tokens, temperature, streamer, cancel,
                                   prepared, abstain)
        first = True
        try:
            while True:
                try:
                    chunk = next(streamer)
                except StopIteration:
                    break
                except Exception:  # queue.Empty after the timeout: give the loop a turn
                    if fut.done():  # finished (an abstention feeds no streamer) or failed
                        break
                    await asyncio.sleep(0.005)
                    continue
                if chunk:
                    yield chunk.lstrip() if first else chunk
                    first = False
            res = await fut
            if res.abstained:
                yield res.text
            yield res
        finally:
            cancel.set()  # a disconnected client stops the decoding

    async def check(self) -> None:
        if self.poisoned:
            raise EngineError(self.poisoned)
        r = await self.generate([("user", ["ping"])], 1, 0.0)
        if r.prompt_tokens <= 0:
            raise EngineError("canary produced no tokens")

    async def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class VLLMEngine(Engine):
    """A vLLM OpenAI-compatible server serving CKPT/backbone (chat completions)."""

    name = "vllm"

    def __init__(self, url: str, model_name: str | None, max_model_len: int | None, timeout_s: float,
                 fallback_context: int) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.model_name = model_name
        self._max_len = max_model_len
        self.fallback_context = fallback_context
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=5.0))

    def max_context(self) -> int:
        return self._max_len or self.fallback_context

    async def _model(self) -> str:
        if self.model_name:
            return self.model_name
        data = await self._get("/v1/models")
        card = data["data"][0]
        self.model_name = card["id"]
        if self._max_len is None and card.get("max_model_len"):
            self._max_len = int(card["max_model_len"])
        return self.model_name

    async def _get(self, path: str) -> dict:
        import httpx

        try:
            r = await self.client.get(self.url + path)
        except httpx.HTTPError as e:
            raise EngineError(f"vLLM at {self.url} unreachable ({type(e).__name__})") from None
        if r.status_code != 200:
            raise EngineError(f"vLLM {path} answered {r.status_code}")
        return r.json()

    @staticmethod
    def _messages(messages: Messages) -> list[dict]:
        out = []
        for role, parts in messages:
            content: list[dict[str, Any]] = []
            for p in parts:
                if isinstance(p, str):
                    content.append({"type": "text", "text": p})
                else:
                    content.append({"type": "image_url",
                                    "image_url": {"url": "data:image/png;base64," + encode_png_base64(p)}})
            out.append({"role": role, "content": content})
        return out

    async def _body(self, messages: Messages, max_tokens: int, temperature: float, stream: bool,
                    abstain: Abstain | None = None) -> dict:
        body = {"model": await self._model(), "messages": self._messages(messages), "max_tokens": max_tokens,
                "temperature": temperature, "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        if abstain is not None and abstain.threshold is not None:  # not abstaining: its first token barred
            body["logit_bias"] = {str(abstain.token): -100}
        return body

    async def _chat(self, body: dict) -> dict:
        """One non-streamed chat completion from vLLM; unreachable or refused: EngineError."""
        import httpx

        try:
            r = await self.client.post(self.url + "/v1/chat/completions", json=body)
        except httpx.HTTPError as e:
            raise EngineError(f"vLLM at {self.url} unreachable ({type(e).__name__})") from None
        if r.status_code != 200:
            raise EngineError(f"vLLM answered {r.status_code}: {r.text[:200]}")
        return r.json()

    async def _abstains(self, messages: Messages, abstain: Abstain) -> GenerationResult | None:
        """The abstention's margin from vLLM's first-token log-probabilities (its top 20; when
        the token is not among them its margin is below the 20th's, which is below the
        threshold unless the threshold is lower still: then it counts as that bound)."""
        if abstain.forced:
            return abstain.abstained(0)
        if abstain.threshold is None:
            return None
        data = await self._chat({**await self._body(messages, 1, 0.0, False), "logprobs": True, "top_logprobs": 20,
                                 "return_tokens_as_token_ids": True})
        top = data["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        lps = {int(t["token"].removeprefix("token_id:")): float(t["logprob"]) for t in top}
        own = lps.pop(abstain.token, min(lps.values()) if lps else float("-inf"))
        margin = own - max(lps.values(), default=float("-inf"))
        if margin >= abstain.threshold:
            return abstain.abstained((data.get("usage") or {}).get("prompt_tokens", 0))
        return None

    async def generate(self, messages: Messages, max_tokens: int, temperature: float,
                       prepared: Prepared | None = None, abstain: Abstain | None = None) -> GenerationResult:
        if abstain is not None and (res := await self._abstains(messages, abstain)) is not None:
            return res
        data = await self._chat(await self._body(messages, max_tokens, temperature, False, abstain))
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return GenerationResult(choice["message"]["content"].strip(), usage.get("prompt_tokens", 0),
                                usage.get("completion_tokens", 0), choice.get("finish_reason") or "stop")

    async def stream(self, messages: Messages, max_tokens: int, temperature: float,
                     prepared: Prepared | None = None, abstain: Abstain | None = None) -> Streamed:
        import httpx

        if abstain is not None and (res := await self._abstains(messages, abstain)) is not None:
            yield res.text
            yield res
            return
        body = await self._body(messages, max_tokens, temperature, True, abstain)
        usage: dict[str, Any] = {}
        text, reason, first = "", "stop", True
        try:
            async with self.client.stream("POST", self.url + "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    raise EngineError(f"vLLM answered {r.status_code}")
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices", []):
                        delta = choice.get("delta", {}).get("content") or ""
                        reason = choice.get("finish_reason") or reason
                        if delta:
                            delta = delta.lstrip() if first else delta
                            if delta:
                                first = False
                                text += delta
                                yield delta
        except httpx.HTTPError as e:
            raise EngineError(f"vLLM at {self.url} unreachable ({type(e).__name__})") from None
        yield GenerationResult(text.strip(), usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), reason)

    async def check(self) -> None:
        import httpx

        try:
            r = await self.client.get(self.url + "/health")
        except httpx.HTTPError as e:
            raise EngineError(f"vLLM at {self.url} unreachable ({type(e).__name__})") from None
        if r.status_code != 200:
            raise EngineError(f"vLLM /health answered {r.status_code}")
        await self._model()

    async def close(self) -> None:
        await self.client.aclose()


def make_engine(settings, model: SugarModel) -> Engine:
    if settings.engine == "vllm":
        return VLLMEngine(settings.vllm_url, settings.vllm_model, settings.vllm_max_model_len,
                          settings.vllm_timeout_s, model.backbone.max_positions)
    return HFEngine(model)


__all__ = ["Abstain", "Engine", "EngineError", "GenerationResult", "HFEngine", "VLLMEngine", "make_engine"]
