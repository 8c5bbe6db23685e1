"""The service: embedding, retrieval, RAG generation and documents, without HTTP.

Routers convert wire schemas to these calls and the results back; nothing
here builds a response. Heavy state (model, index, engine) is created once
at start-up and reached through the app state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from index import DocumentIndex, DocumentVectors, Hit
from index.collections import CollectionNotFound, CollectionRefused, Collections
from index.index import merge_hits, term_evidence
from index.ingest import (
    UPLOAD_PREFIX,
    Chunked,
    FileResult,
    IngestConfig,
    Ingestor,
    SourceFile,
    SourcePlan,
    SourceReader,
    pair_uploads,
    write,
)
from index.ingest.chunking import TokenizerCount
from index.ingest.readers import ReadOptions
from model.backbone import Backbone
from model.prompts import ABSTAIN_ANSWER, Part, Prompt, rag_parts
from model.sample import Sample, SampleError
from model.search import DEFAULT_COLLECTION, SearchParams
from model.sugar import SugarModel, abstain_token

from .batching import EmbeddingBatcher, GenerationLimiter
from .embedder import Embedder, InProcessEmbedder
from .engine import Abstain, Engine, EngineError, GenerationResult, Prepared, Streamed
from .policy import InputPolicy
from .protocol import RetrievalOptions
from .settings import Settings
from .workers import IngestPool, ReadTimeout, WorkerDied, read_sources

logger = logging.getLogger(__name__)


class NotFound(KeyError):
    pass


def _words(slices: list[dict[str, Any]]) -> str:
    """The text a query's lexical side reads: its text slices."""
    return "\n".join(s["text"] for s in slices if s["type"] == "text")


def _in(collection: str | None) -> str:
    """" in collection 'x'" for messages about a named collection's documents."""
    return f" in collection {collection!r}" if collection and collection != DEFAULT_COLLECTION else ""


class Conflict(KeyError):
    def __init__(self, message: str, field: str = "id") -> None:
        super().__init__(message)
        self.field = field


class BadRequest(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class UploadRefused(ValueError):
    """Files of an upload that cannot be read ({"file", "reason"} each); nothing was stored."""

    def __init__(self, files: list[dict[str, Any]]) -> None:
        self.files = files
        shown = "; ".join(f"{f['file']}: {f['reason']}" for f in files[:10])
        super().__init__(f"{len(files)} file(s) cannot be read, nothing was stored: {shown}")


# tokens kept free when documents were dropped and the engine tokenises the shorter prompt
# itself (vLLM): its tokenisation of the join may differ from our cut by a token or two
JOIN_SLACK = 2


def dropped_span(full: str, short: str) -> tuple[int, int]:
    """[lo, hi) of `full` whose removal leaves `short` (a prompt with its last documents left out)."""
    lo = len(os.path.commonprefix([full, short]))
    tail = len(os.path.commonprefix([full[lo:][::-1], short[lo:][::-1]]))
    hi = len(full) - tail
    assert full[:lo] + full[hi:] == short, "the shorter prompt is not the longer one with one span left out"
    return lo, hi


def cut_prompt(full: Prompt, tokenized: tuple[list[int], list[int]], short: Prompt,
               bb: Backbone) -> tuple[list[int], list[Any]]:
    """The ids and images of `short` (`full` with one span left out: its last documents) cut
    from `full`'s one tokenisation (`Backbone.tokenize`). Exact when tokens of `full` start
    at both ends of the span (the documents' blocks begin on a line of their own); otherwise
    (no document left: the span starts mid-line) `short` is tokenised itself."""
    ids, starts = tokenized
    lo, hi = dropped_span(full.text, short.text)
    at = set(starts)
    if lo not in at or (hi not in at and hi != len(full.text)):
        return bb.tokenize(short)[0], list(short.images)
    places = [m.start() for m in re.finditer(re.escape(bb.image_token), full.text)]
    return ([t for t, s in zip(ids, starts, strict=True) if not lo <= s < hi],
            [im for im, s in zip(full.images, places, strict=True) if not lo <= s < hi])


@dataclass
class RagPlan:
    messages: list[tuple[str, list[Part]]]
    used: list[Hit] = field(default_factory=list)
    dropped: list[Hit] = field(default_factory=list)
    retrieval_ms: float = 0.0
    prepared: Prepared | None = None  # the prompt as tokenised for the budget (in-process engine)
    # the checkpoint's abstention applies (documents in the context, no image in the question)
    abstain: Abstain | None = None


class SugarService:
    def __init__(self, settings: Settings, model: SugarModel, collections: Collections, engine: Engine,
                 batching: bool = True, on_batch=None, embedder: Embedder | None = None) -> None:
        self.settings, self.model, self.collections, self.engine = settings, model, collections, engine
        self.embedder = embedder or InProcessEmbedder(model, settings.embed_max_batch)
        self.policy = InputPolicy.from_settings(settings)  # every way bytes enter (server/policy.py)
        self.limits = self.policy.limits
        self.batcher = EmbeddingBatcher(self._embed_sync, settings.embed_max_batch, settings.embed_max_wait_ms,
                                        settings.embed_queue_size, enabled=batching, on_batch=on_batch,
                                        cost=self.token_estimate, max_cost=settings.embed_batch_tokens)
        self.generations = GenerationLimiter(settings.gen_queue_size)
        self._token_count: TokenizerCount | None = None  # the workers' token count (picklable)
        self.ingest_pool = (IngestPool(settings.ingest_workers, settings.ingest_queue, settings.ingest_timeout_s)
                            if settings.ingest_workers else None)
        self._ready_at = 0.0
        self._ready_error: str | None = "not checked yet"
        c = model.config
        self.abstain = None if c.abstain_threshold is None and c.abstain_evidence_threshold is None else Abstain(
            abstain_token(model.backbone), c.abstain_threshold, ABSTAIN_ANSWER)

    @property
    def index(self) -> DocumentIndex:
        """The default collection (the index the server was given)."""
        return self.collections.default

    def collection(self, name: str | None, field: str = "collection") -> DocumentIndex:
        """A collection's index: NotFound (404) naming an unknown one, BadRequest (422) for a
        name outside the grammar."""
        try:
            return self.collections.get(name or DEFAULT_COLLECTION)
        except CollectionNotFound as e:
            raise NotFound(str(e)) from None
        except CollectionRefused as e:
            raise BadRequest(field, str(e)) from None

    async def start(self) -> None:
        await asyncio.to_thread(self.warm_up)
        self.batcher.start()
        if self.ingest_pool:
            self.ingest_pool.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        if self.ingest_pool:
            await self.ingest_pool.stop()
        await self.engine.close()
        self.embedder.close()
        self.collections.close()

    def warm_up(self) -> None:
        """What loads or compiles on its first call (numba's GA kernel, FAISS, the lexical index,
        the model's first forward) runs once before serving: the first requests under load
        would otherwise each hold the GIL for a few hundred milliseconds and stall every
        other request, `/health` included."""
        import torch

        [e] = self._embed_sync([Sample.build(["warm-up"])])
        v = torch.from_numpy(e.vectors)[None]
        self.model.config.kernel.similarity(v, v)
        if self.index.count():
            self.index.search(e, SearchParams(k=1, mode="hybrid"), "warm-up")

    # ------------------------------------------------------------ input
    def parse(self, raw: dict[str, Any], where: str) -> Sample:
        sample = Sample.from_dict(raw, limits=self.limits, resolve_path=self.policy.read_path,
                                  resolve_url=self.policy.fetch_url, where=where)
        self._check_tokens(sample, where)
        return sample

    def _check_tokens(self, sample: Sample, where: str) -> None:
        """Bound a sample by what it costs: its embedding prompt's tokens, counted by the
        tokenizer, within `max_input_tokens` (default: the model's context). A text too
        long to fit even at the longest token is refused without tokenising it; a prompt
        that fits even at one token per byte (plus its images' tokens and a margin for the
        tokens a tokenizer adds) is admitted without tokenising it either — the embedding
        tokenises it once, later."""
        from model.prompts import embedding_prompt

        bb = self.model.backbone
        limit = min(self.settings.max_input_tokens or bb.max_positions, bb.max_positions)
        chars = sum(len(s.text or "") for s in sample.slices)
        if chars > limit * self._longest_token:
            raise SampleError(where, f"{chars} characters cannot fit in {limit} tokens (the input limit)")
        prompt = embedding_prompt(sample, self.model.config.prompts)
        n_images = len(prompt.images)
        text_bytes = len(prompt.text.encode("utf-8")) - n_images * len(bb.image_token.encode("utf-8"))
        if text_bytes + n_images * bb.image_token_count() + 2 * len(sample.slices) + 8 <= limit:
            return
        n = bb.prompt_length(prompt)
        if n > limit:
            raise SampleError(where, f"{n} tokens exceed the input limit of {limit}")

    def token_estimate(self, sample: Sample) -> int:
        """A sample's embedding tokens, bounded without the tokenizer (micro-batch costs): a token
        per byte of text at most (what `_check_tokens` admits by), each image's tokens, a few
        for the prompt's frame, and never more than the input limit."""
        bb = self.model.backbone
        per_image = bb.image_token_count()
        n = 16 + sum(len((s.text or "").encode("utf-8")) + 2 if s.type == "text" else per_image
                     for s in sample.slices)
        return min(n, bb.max_positions)

    def count_text_tokens(self, samples: list[Sample]) -> int:
        """Tokens of the samples' text (OpenAI embeddings `usage`), under the tokenizer lock."""
        bb = self.model.backbone
        with bb.lock:
            return sum(len(bb.tokenizer(s.text())["input_ids"]) for s in samples)

    @property
    def _longest_token(self) -> int:
        if not hasattr(self, "_longest"):
            tok = self.model.backbone.tokenizer
            self._longest = max(len(tok.convert_tokens_to_string([t])) for t in tok.get_vocab())
        return self._longest

    # ------------------------------------------------------------ embedding
    def _embed_sync(self, samples: list[Sample]) -> list[DocumentVectors]:
        return self.embedder.embed(samples)

    async def embed(self, samples: list[Sample]) -> list[DocumentVectors]:
        return await self.batcher.submit(samples)

    async def store(self, samples: list[Sample], embeddings: list[DocumentVectors], upsert: bool,
                    collection: str | None = None) -> list[str]:
        """Store embedded samples (one transaction, `index.ingest.write`)."""
        plan = SourcePlan(samples, vectors=embeddings)
        index = self.collection(collection)
        try:
            return await asyncio.to_thread(write, index, [plan], None, self.model.embedding_version, upsert)
        except KeyError as e:
            raise Conflict(f"document {e} already exists (use PUT /documents/{{id}} to replace it)") from None

    # ------------------------------------------------------------ retrieval
    async def retrieve(self, query: Sample | str, params: SearchParams, where: str = "",
                       explain: bool = False) -> list[Hit]:
        """Ranked hits, each with its stored document (one read, inside the search); an unset
        mode and lexical weight are the server's (retrieval_mode, retrieval_lexical_weight), the
        lexical side reads the query's text slices. `where`: the request's field prefix. A query
        given as a stored document's id (more like this) searches with its stored vectors and
        words, and leaves that document out."""
        [hits] = await self.retrieve_many([query], params, where, explain)
        return hits

    async def retrieve_many(self, queries: Sequence[Sample | str], params: SearchParams, where: str = "",
                            explain: bool = False) -> list[list[Hit]]:
        """`retrieve` for each query (the new ones embedded together): one ranking each."""
        if params.k > self.settings.max_k:
            raise BadRequest(f"{where}k", f"{params.k} exceeds the limit of {self.settings.max_k}")
        if params.k_prime is not None and params.k_prime > 10 * self.settings.max_k:
            raise BadRequest(f"{where}k_prime", f"{params.k_prime} exceeds the limit of {10 * self.settings.max_k}")
        params = params.with_defaults(self.settings.retrieval_mode, self.settings.retrieval_lexical_weight)
        field = f"{where}collection" + ("s" if len(params.collections) > 1 else "")
        indexes = {name: self.collection(name, field) for name in params.collections}
        stored = await asyncio.to_thread(self._stored_queries, [q for q in queries if isinstance(q, str)], indexes)
        new = [q for q in queries if not isinstance(q, str)]
        fresh = iter(await self.embed(new) if new else [])
        asked: list[tuple[str | None, DocumentVectors, str, str | None]] = []
        for q in queries:  # (the home collection of a stored query, its vectors, its words, its id)
            if isinstance(q, str):
                home, d = stored[q]
                asked.append((home, DocumentVectors(d.vectors, d.summary), _words(d.slices), q))
            else:
                asked.append((None, next(fresh), _words([{"type": s.type, "text": s.text} for s in q.slices]), None))
        multi = len(indexes) > 1

        def search_one(home: str | None, emb: DocumentVectors, text: str, own: str | None) -> list[Hit]:
            ranked = []
            for name, index in indexes.items():
                p = params.replace(exclude_ids=(own,) if own is not None and name == home else (),
                                   score_threshold=None if multi else params.score_threshold)
                hits = index.search(emb, p, text)
                for h in hits:
                    h.collection = name
                ranked.append(hits)
            hits = ranked[0] if not multi else merge_hits(ranked, params.k, params.mode or "dense",
                                                          params.lexical_weight or 0.0)
            if multi and params.score_threshold is not None:
                hits = [h for h in hits if h.score >= params.score_threshold]
            if explain:
                for h in hits:
                    assert h.document is not None
                    dense = h.dense_score if h.dense_score is not None else h.score
                    h.explanation = self._explain(emb, h.document, dense)
            return hits

        return await asyncio.to_thread(lambda: [search_one(*a) for a in asked])

    def _stored_queries(self, ids: list[str], indexes: dict[str, DocumentIndex]) -> dict[str, tuple[str, Any]]:
        """Each more-like-this id's collection and stored document (the first collection holding
        it); NotFound naming an id none of them holds."""
        out: dict[str, tuple[str, Any]] = {}
        for name, index in indexes.items():
            missing = [i for i in dict.fromkeys(ids) if i not in out]
            for i, d in index.get_many(missing).items() if missing else ():
                out[i] = (name, d)
        for i in ids:
            if i not in out:
                raise NotFound(f"no document {i!r}" + _in(next(iter(indexes)) if len(indexes) == 1 else None)
                               + " to find more like it")
        return out

    # ------------------------------------------------------------ generation
    def max_tokens(self, requested: int | None) -> int:
        n = requested or self.settings.default_max_tokens
        if n > self.settings.max_tokens_limit:
            raise BadRequest("max_tokens", f"{n} exceeds the limit of {self.settings.max_tokens_limit}")
        return n

    async def plan(self, history: list[tuple[str, list[Part]]], query: Sample, max_tokens: int,
                   retrieval: RetrievalOptions | None = None) -> RagPlan:
        """Retrieve for the last user turn (`retrieval`: the request's options, whole; None:
        the server's defaults), then fit the documents into the context budget: documents
        are dropped from the end of the ranking until the prompt fits."""
        t0 = time.perf_counter()
        hits: list[Hit] = []
        r = retrieval or RetrievalOptions()
        params = r.to_search_params(self.settings.retrieval_k)
        if params.k > self.settings.max_k:  # refused even with retrieval off: the schema says so
            raise BadRequest("retrieval.k", f"{params.k} exceeds the limit of {self.settings.max_k}")
        if r.enabled and params.k > 0:
            hits = await self.retrieve(query, params, "retrieval.")
        retrieval_ms = (time.perf_counter() - t0) * 1e3
        # decoding images and tokenising prompts is CPU work: off the event loop
        plan = await asyncio.to_thread(self._fit, history, query, hits, max_tokens, retrieval_ms)
        words_scored = (params.mode or self.settings.retrieval_mode) != "dense"
        if self.abstain is not None:
            plan.abstain = await asyncio.to_thread(self._abstention, query, plan, words_scored, params.collections)
        return plan

    def _abstention(self, query: Sample, plan: RagPlan, words_scored: bool,
                    collections: Sequence[str]) -> Abstain | None:
        """The checkpoint's abstention for this plan: it needs documents to judge and a question
        whose answer cannot be in itself (text only); forced when the retrieval scored words and
        the documents used hold none of the question's rarer words: their evidence
        (index.index.term_evidence over the collections searched) below the calibrated
        `abstain_evidence_threshold`."""
        if self.abstain is None or not plan.used or any(s.type != "text" for s in query.slices):
            return None
        ev_t = self.model.config.abstain_evidence_threshold
        if not words_scored or ev_t is None:
            return self.abstain
        used = [_words(h.document.slices) for h in plan.used if h.document is not None]
        evidence = term_evidence(query.text(), used, [self.collection(name, "retrieval.collection")
                                                      for name in collections])
        return dataclasses.replace(self.abstain, forced=evidence is not None and evidence < ev_t)

    def _fit(self, history, query: Sample, hits: list[Hit], max_tokens: int, retrieval_ms: float) -> RagPlan:
        """The prompt with every retrieved document is tokenised once — the query and each
        document once, kept or dropped. When it does not fit, documents are dropped from the
        end of the ranking: each shorter prompt's length comes from the same tokenisation (the
        tokens of the dropped span left out), and the engine that decodes from our tokens gets
        exactly those ids."""
        from model.prompts import chat_prompt

        docs, usable = [], []
        for h in hits:  # a stored document that cannot be rendered is left out, never an error for all
            try:
                docs.append(h.document.to_sample())  # type: ignore[union-attr]
                usable.append(h)
            except SampleError as e:
                logger.warning("generation: document %r left out of the context: %s", h.id, e)
        hits = usable
        budget = self.engine.max_context() - max_tokens
        fmt, bb = self.model.config.prompts, self.model.backbone

        def messages_with(n: int) -> list[tuple[str, list[Part]]]:
            return [*history, ("user", rag_parts(docs[:n], query, fmt))]

        def render(n: int):  # text only: rendering is not tokenising
            return chat_prompt(messages_with(n), fmt, eos=bb.eos_token)

        full = render(len(docs))
        tokenized = bb.tokenize(full)
        ids, images = tokenized[0], list(full.images)
        used, n = len(docs), len(ids)
        while n > budget and used > 0:
            used -= 1
            ids, images = cut_prompt(full, tokenized, render(used), bb)
            # an engine that tokenises the shorter prompt itself may join the two sides with
            # a token or two other than our cut: keep that margin
            n = len(ids) + (0 if self.engine.decodes_our_tokens else JOIN_SLACK)
        if n > budget:
            raise BadRequest("max_tokens", f"the prompt takes {n} tokens and max_tokens {max_tokens}: more than "
                             f"the context of {self.engine.max_context()}")
        prepared = self.engine.prepare_ids(ids, images)
        return RagPlan(messages_with(used), hits[:used], hits[used:], retrieval_ms, prepared)

    async def generate(self, plan: RagPlan, max_tokens: int, temperature: float) -> GenerationResult:
        self.generations.acquire()
        try:
            return await asyncio.wait_for(self.engine.generate(plan.messages, max_tokens, temperature, plan.prepared,
                                                               plan.abstain), self.settings.gen_timeout_s)
        except asyncio.TimeoutError:
            raise EngineError(f"generation timed out after {self.settings.gen_timeout_s} s") from None
        finally:
            self.generations.release()

    def stream(self, plan: RagPlan, max_tokens: int, temperature: float) -> Streamed:
        """Text deltas, then the final GenerationResult (the caller holds a generation slot)."""
        return self.engine.stream(plan.messages, max_tokens, temperature, plan.prepared, plan.abstain)

    # ------------------------------------------------------------ uploads (index.ingest)
    def _ingestor(self, metadata: dict[str, Any] | None, index: DocumentIndex) -> Ingestor:
        # images linked or named by an upload follow the input policy: the URL allow-list,
        # SUGAR_ALLOW_PATHS for paths in uploaded JSONL, the per-request pixel budget
        read = ReadOptions(limits=self.limits, resolve=self.policy.fetch_linked, resolve_path=self.policy.read_path,
                           pdf_page_images=self.settings.pdf_page_images)
        config = IngestConfig.for_model(self.model, self.settings.max_slices, self.settings.retrieval_k,
                                        read=read, metadata=metadata or {},
                                        batch_size=self.settings.embed_max_batch)
        return Ingestor(index, self._embed_sync, self.model.embedding_version, config)

    async def upload(self, files: list[tuple[str, bytes]], metadata: dict[str, Any] | None,
                     collection: str | None = None) -> list[FileResult]:
        """Read and chunk every file first (in an ingestion worker, `server.workers`); any
        unreadable file refuses the whole upload (`UploadRefused`, nothing stored). Then embed
        (through the shared batcher) and write everything in one transaction
        (`index.ingest.write`)."""
        index = self.collection(collection)
        ing = self._ingestor(metadata, index)
        loop = asyncio.get_running_loop()
        sources = pair_uploads(files)
        if self.ingest_pool is not None:
            pool = self.ingest_pool
            # the worker gets a reader of plain data: the tokenizer's backend, not the model
            if self._token_count is None:
                self._token_count = TokenizerCount.of(self.model.backbone)
            reader = SourceReader(dataclasses.replace(ing.config, count=self._token_count))

            def read_in_worker(changed: Sequence[SourceFile]) -> list[Chunked | str]:
                job = pool.run(read_sources, reader, changed, self.policy.max_request_pixels)
                return asyncio.run_coroutine_threadsafe(job, loop).result()

            ing.read = read_in_worker
        try:
            plans = await asyncio.to_thread(ing.plan, sources)
        except (ReadTimeout, WorkerDied) as e:
            raise UploadRefused([{"file": f.name, "reason": str(e)} for f in sources]) from None
        bad = [{"file": p.result.source.removeprefix(UPLOAD_PREFIX), "reason": p.result.reason}  # type: ignore[union-attr]
               for p in plans if p.failed]
        if bad:
            raise UploadRefused(bad)

        def embed(samples: list[Sample]) -> list[DocumentVectors]:  # from the writer thread, through the batcher
            return asyncio.run_coroutine_threadsafe(self.embed(samples), loop).result()

        try:
            await asyncio.to_thread(write, index, plans, embed, self.model.embedding_version, True,
                                    self.settings.embed_max_batch)
        except KeyError as e:
            raise Conflict(f"document {e} changed during the upload; send it again") from None
        return [p.result for p in plans]  # type: ignore[misc]

    # ------------------------------------------------------------ documents
    async def get_document(self, doc_id: str, collection: str | None = None):
        d = await asyncio.to_thread(self.collection(collection).get, doc_id)
        if d is None:
            raise NotFound(f"no document {doc_id!r}" + _in(collection))
        return d

    async def delete_document(self, doc_id: str, collection: str | None = None) -> None:
        index = self.collection(collection)
        try:
            await asyncio.to_thread(index.delete, [doc_id])
        except KeyError:
            raise NotFound(f"no document {doc_id!r}" + _in(collection)) from None

    # ------------------------------------------------------------ scoring (/v1/rerank, /score)
    async def score(self, queries: list[Sample], documents: list[Sample | str], collection: str | None,
                    pairwise: bool, explain: bool = False, field: str = "documents"
                    ) -> list[tuple[float, dict[str, Any] | None]]:
        """s̄ of each query against each document (or pairwise), by the alignment kernel over
        slice vectors: new samples embedded together, stored documents (ids) scored on their
        stored vectors. With `explain`, the soft alignment of each pair."""
        stored_ids = [d for d in documents if isinstance(d, str)]
        index = self.collection(collection) if stored_ids else self.index
        stored = await asyncio.to_thread(index.get_many, stored_ids) if stored_ids else {}
        for k, d in enumerate(documents):
            if isinstance(d, str) and d not in stored:
                raise NotFound(f"no document {d!r}{_in(collection)} ({field}[{k}])")
        new = [d for d in documents if not isinstance(d, str)]
        vectors = await self.embed([*queries, *new])
        q_vecs, fresh = vectors[: len(queries)], iter(vectors[len(queries):])
        docs = [stored[d] if isinstance(d, str) else next(fresh) for d in documents]
        pairs = ([(i, i) for i in range(len(queries))] if pairwise
                 else [(0, j) for j in range(len(docs))])

        def run() -> list[tuple[float, dict[str, Any] | None]]:
            out = []
            for qi in sorted({i for i, _ in pairs}):
                js = [j for i, j in pairs if i == qi]
                scores = index.rerank(q_vecs[qi], [docs[j] for j in js])
                for j, sc in zip(js, scores, strict=True):
                    out.append((sc, self._explain(q_vecs[qi], docs[j], sc) if explain else None))
            return out

        return await asyncio.to_thread(run)

    def _explain(self, q: DocumentVectors, d: Any, score: float) -> dict[str, Any]:
        """For each query slice, the document slice its soft alignment goes through most."""
        import torch

        from model.kernels import soft_alignment

        k = self.model.config.kernel
        x, y = torch.from_numpy(q.vectors.astype("float32")), torch.from_numpy(d.vectors.astype("float32"))
        a = soft_alignment(x, y, k.sigma, k.gamma)
        cos = x @ y.T
        best = a.argmax(1).tolist()
        return {"score": float(score), "alignment": [
            {"query_slice": i, "document_slice": j, "weight": round(float(a[i, j]), 6),
             "similarity": round(float(cos[i, j]), 6)} for i, j in enumerate(best)]}

    # ------------------------------------------------------------ readiness
    async def ready(self) -> dict[str, Any]:
        now = time.monotonic()
        if now - self._ready_at > self.settings.ready_cache_s:
            self._ready_at = now
            try:
                [e] = await self.embed([Sample.build(["canary"])])
                if e.summary.shape != (self.index.dim,):
                    raise EngineError("canary embedding has the wrong dimension")
                await asyncio.wait_for(self.engine.check(), self.settings.vllm_timeout_s)
                await asyncio.to_thread(self.embedder.check)
                self.index.check_available()
                self._ready_error = None
            except Exception as e:  # any failure turns /ready red, with the reason
                self._ready_error = f"{type(e).__name__}: {e}"
        lm = self.model.vlm
        return {"model": self.model.embedding_version, "index_documents": self.index.count(),
                "engine": self.engine.name, "embed_engine": self.embedder.name,
                "device": str(self.model.backbone.device),
                "dtype": str(next(lm.parameters()).dtype).removeprefix("torch."), "error": self._ready_error}
