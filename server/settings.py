"""Server settings: pydantic-settings, every field also from SUGAR_<NAME> and `.env`.

Kept apart from the model config (sugar_config.json). Start-up refuses
nonsense with a clear message: a missing checkpoint, an index built by
another embedding version or with another dimension (`check_startup`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SUGAR_", env_file=".env", extra="ignore")

    checkpoint: Path | None = None
    index: Path | None = None
    # a shared index on PostgreSQL + pgvector (postgresql://…; index/pg.py) instead of `index`
    index_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None  # the admin key: every route, every collection
    # keys scoped to collections (server/auth.py): a JSON list of {"key_sha256", "collections", "access"}
    api_keys_file: Path | None = None
    metrics_public: bool = False  # open /metrics to a scraper without the API key
    engine: str = "hf"  # "hf" (in-process transformers) | "vllm"
    vllm_url: str = "http://127.0.0.1:8001"
    vllm_model: str | None = None  # the served model name (default: what /v1/models lists first)
    vllm_max_model_len: int | None = None  # the context budget when engine = vllm
    vllm_timeout_s: float = 60.0
    # where /embed, queries and ingestion are embedded: "hf" (in this process) or "vllm" (a vLLM
    # pooling runner on CKPT/backbone at vllm_embed_url: per-token hidden states, slice pooling
    # and the heads applied here; server/embedder.py)
    embed_engine: str = Field(default="hf", pattern="^(hf|vllm)$")
    vllm_embed_url: str = "http://127.0.0.1:8002"
    vllm_embed_model: str | None = None  # the pooling server's model name (default: its first)
    threads: int = 0  # torch intra-op threads (0: torch's default)
    # where embedding and in-process generation run: "auto" (CUDA when present), "cpu",
    # "cuda" or "cuda:N"; the backbone's dtype: float32, bfloat16 or float16 (GPU)
    device: str = "auto"
    dtype: str = "float32"
    served_model_name: str = "sugar"
    # what a request may name (never read/fetched unless allow-listed)
    allow_paths: list[Path] = Field(default_factory=list)
    allow_urls: list[str] = Field(default_factory=list)  # http(s)://host[:port][/path] (server/urls.py)
    allow_private_urls: bool = False  # let allow-listed URLs resolve to loopback/private addresses
    # limits, enforced before work is done
    max_body_bytes: int = 32 * 1024 * 1024
    body_timeout_s: float = 30.0  # the whole request body must arrive within this
    max_image_pixels: int = 4096 * 4096
    # decoded pixels of all the images one request carries (uploads: all its files, PDF pages
    # and embedded images included); 0: no budget beyond the per-image limit
    max_request_pixels: int = 4 * 4096 * 4096
    max_image_aspect: float = 20.0  # longer side / shorter side
    max_image_bytes: int = 16 * 1024 * 1024
    image_formats: list[str] = Field(default_factory=lambda: ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
    max_slices: int = 64
    max_text_chars: int = 16_384
    max_samples_per_request: int = 64
    max_k: int = 100
    max_tokens_limit: int = 512
    # tokens of one sample's embedding prompt (images count their tokens); 0: the model's context
    max_input_tokens: int = 0
    default_max_tokens: int = 64
    # batching and backpressure
    embed_queue_size: int = 256  # queued samples; beyond it: 429
    embed_max_batch: int = 32
    embed_max_wait_ms: float = 5.0
    # a micro-batch's estimated cost (tokens of its longest sample x its size): a big request
    # is split so that small ones behind it wait for one micro-batch, not the whole request
    embed_batch_tokens: int = Field(default=4096, ge=0)
    gen_queue_size: int = 64  # generation requests waiting or running; beyond it: 429
    gen_timeout_s: float = 120.0
    retrieval_k: int = 3
    # how /retrieve, /generate and chat rank when a request does not say (index.index):
    # "hybrid" (dense GA-kernel ranking fused with BM25 over the documents' text),
    # "dense" or "lexical"
    retrieval_mode: str = Field(default="hybrid", pattern="^(dense|hybrid|lexical)$")
    retrieval_lexical_weight: float = Field(default=0.6, ge=0.0, le=1.0)  # hybrid: BM25's share
    ready_cache_s: float = 5.0
    snapshot_every: int = Field(default=1000, ge=1)  # index writes between FAISS snapshots
    # collections beside the default one (PUT /collections/{name}; index/collections.py)
    max_collections: int = Field(default=100, ge=1, le=10_000)
    # POST /documents/upload (the whole request stays under max_body_bytes too)
    max_upload_files: int = 32
    max_upload_file_bytes: int = 16 * 1024 * 1024
    pdf_page_images: str = Field(default="auto", pattern="^(auto|always|never)$")
    # uploads are read and chunked in worker processes (server/workers.py): this many run,
    # ingest_queue more wait (beyond: 429), a job past ingest_timeout_s has its worker
    # replaced (the upload is refused, 422); 0 workers: read in the serving process
    ingest_workers: int = Field(default=1, ge=0, le=64)
    ingest_queue: int = Field(default=8, ge=0)
    ingest_timeout_s: float = Field(default=60.0, gt=0)

    @field_validator("allow_urls")
    @classmethod
    def _allow_urls(cls, v: list[str]) -> list[str]:
        from .urls import AllowedPrefix

        for entry in v:
            AllowedPrefix.parse(entry)  # a malformed entry stops the start-up, naming itself
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return v

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in ("float32", "bfloat16", "float16"):
            raise ValueError("dtype must be float32, bfloat16 or float16")
        return v

    @field_validator("engine")
    @classmethod
    def _engine(cls, v: str) -> str:
        if v not in ("hf", "vllm"):
            raise ValueError("engine must be 'hf' or 'vllm'")
        return v


class StartupError(RuntimeError):
    """The server refuses to start; the message says why."""


def resolve_device(settings: Settings) -> str:
    """The torch device to serve on; "cuda" without a GPU is refused, never a silent CPU fallback."""
    import torch

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        raise StartupError(f"device {device!r} requested but CUDA is not available "
                           "(SUGAR_DEVICE=cpu, or auto to use a GPU only when present)")
    if settings.dtype == "float16" and device == "cpu":
        raise StartupError("dtype float16 is for GPUs; on the CPU use float32 or bfloat16")
    return device


def check_startup(settings: Settings) -> None:
    if settings.checkpoint is None:
        raise StartupError("no checkpoint given (--checkpoint or SUGAR_CHECKPOINT)")
    if not (settings.checkpoint / "sugar_config.json").is_file():
        raise StartupError(f"{settings.checkpoint}: not a Sugar checkpoint (sugar_config.json missing)")
    if settings.index is None and settings.index_url is None:
        raise StartupError("no index given (--index or SUGAR_INDEX; --index-url or SUGAR_INDEX_URL)")
    if settings.index is not None and settings.index_url is not None:
        raise StartupError("both an index directory and an index URL given: choose one")
    if settings.index_url is not None and not settings.index_url.startswith(("postgresql://", "postgres://")):
        raise StartupError(f"index URL {settings.index_url.split('@')[-1]!r} is not a postgresql:// URL")
