"""Where embeddings are computed: in this process, or by a vLLM pooling runner.

`InProcessEmbedder` runs the checkpoint's forward pass here (`SugarModel.embed`).
`VLLMEmbedder` asks a vLLM server started with the pooling runner on CKPT/backbone
(`--runner pooling --convert embed --pooler-config '{"task": "token_embed",
"use_activation": false}'`) for the per-token hidden states of the embedding prompt —
sent as one user chat message, which the backbone's chat template renders byte for
byte as `model.prompts.embedding_prompt` — and applies slice pooling and the
projection heads here (`SugarModel.embed_hidden_states`). The token -> slice map comes
from this process's own tokenisation of the same prompt; a vLLM tokenisation of
another length is refused (EngineError), never pooled wrongly. So the GPU that
decodes also embeds, and the vectors are the in-process ones (within float error).

Both are called from worker threads (the embedding batcher, ingestion).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from index import DocumentVectors
from index.embedding import document_vectors, embed_samples
from model.prompts import embedding_prompt, slice_parts
from model.sample import Sample, encode_png_base64
from model.sugar import SugarModel

from .engine import EngineError

logger = logging.getLogger(__name__)


class Embedder(ABC):
    name: str

    @abstractmethod
    def embed(self, samples: Sequence[Sample]) -> list[DocumentVectors]: ...

    def check(self) -> None:  # noqa: B027 - optional hook: nothing to check in process
        """Raise EngineError unless embeddings can be computed now."""

    def close(self) -> None:
        return None


class InProcessEmbedder(Embedder):
    name = "hf"

    def __init__(self, model: SugarModel, batch_size: int) -> None:
        self.model, self.batch_size = model, batch_size

    def embed(self, samples: Sequence[Sample]) -> list[DocumentVectors]:
        return embed_samples(self.model, samples, batch_size=self.batch_size)


def pooling_request(sample: Sample, model_name: str) -> dict[str, Any]:
    """The /pooling body of one sample's embedding prompt (a user message, no generation prompt)."""
    content: list[dict[str, Any]] = []
    for part in slice_parts(sample.slices):
        if isinstance(part, str):
            content.append({"type": "text", "text": part})
        else:
            url = "data:image/png;base64," + encode_png_base64(part)
            content.append({"type": "image_url", "image_url": {"url": url}})
    return {"model": model_name, "task": "token_embed", "add_generation_prompt": False,
            "messages": [{"role": "user", "content": content}]}


class VLLMEmbedder(Embedder):
    """Per-token hidden states from a vLLM pooling runner; pooling and heads here."""

    name = "vllm"

    def __init__(self, model: SugarModel, url: str, model_name: str | None, timeout_s: float,
                 parallel: int = 16) -> None:
        import httpx

        if model.config.hidden_layer != -1:
            raise ValueError(f"embeddings through vLLM need the last hidden layer (the checkpoint pools layer "
                             f"{model.config.hidden_layer}); use the in-process embedder")
        self.model, self.url, self.model_name = model, url.rstrip("/"), model_name
        self.client = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=5.0))
        self.pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="vllm-embed")

    def _name(self) -> str:
        if self.model_name is None:
            data = self._get("/v1/models")
            self.model_name = data["data"][0]["id"]
        return self.model_name

    def _get(self, path: str) -> dict:
        import httpx

        try:
            r = self.client.get(self.url + path)
        except httpx.HTTPError as e:
            raise EngineError(f"vLLM pooling server at {self.url} unreachable ({type(e).__name__})") from None
        if r.status_code != 200:
            raise EngineError(f"vLLM pooling server {path} answered {r.status_code}")
        return r.json() if r.content else {}

    def hidden_states(self, sample: Sample) -> torch.Tensor:
        """[T, d] last-layer hidden states of the sample's embedding prompt, from vLLM."""
        import httpx

        try:
            r = self.client.post(self.url + "/pooling", json=pooling_request(sample, self._name()))
        except httpx.HTTPError as e:
            raise EngineError(f"vLLM pooling server at {self.url} unreachable ({type(e).__name__})") from None
        if r.status_code != 200:
            raise EngineError(f"vLLM pooling answered {r.status_code}: {r.text[:200]}")
        return torch.tensor(r.json()["data"][0]["data"], dtype=torch.float32)

    def embed(self, samples: Sequence[Sample]) -> list[DocumentVectors]:
        model = self.model
        batches = [model.backbone.encode([embedding_prompt(s, model.config.prompts)]) for s in samples]
        hidden = list(self.pool.map(self.hidden_states, samples))
        for h, b in zip(hidden, batches, strict=True):
            if h.shape[0] != b.input_ids.shape[1]:
                raise EngineError(f"vLLM tokenised an embedding prompt into {h.shape[0]} tokens, this process into "
                                  f"{b.input_ids.shape[1]}: the served backbone is not this checkpoint's")
        device = model.backbone.device
        with torch.no_grad():
            was = model.training
            model.eval()
            try:
                e = model.embed_hidden_states([h[None].to(device) for h in hidden], batches)
            finally:
                model.train(was)
        return [document_vectors(e, b) for b in range(len(samples))]

    def check(self) -> None:
        self._get("/health")
        self._name()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


def make_embedder(settings, model: SugarModel) -> Embedder:
    if settings.embed_engine == "vllm":
        return VLLMEmbedder(model, settings.vllm_embed_url, settings.vllm_embed_model, settings.vllm_timeout_s,
                            parallel=settings.embed_max_batch)
    return InProcessEmbedder(model, settings.embed_max_batch)


__all__ = ["Embedder", "InProcessEmbedder", "VLLMEmbedder", "make_embedder", "pooling_request"]
