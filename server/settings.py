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

    checkpoint: Path | None = Field(default=None, description=(
        "the Sugar checkpoint to serve (default: the one shipped in the package, model/default_checkpoint)"))
    index: Path | None = Field(default=None, description=(
        "the index directory (default: $SUGAR_HOME/index/default-<embedding version>, the built-in collection "
        "indexed for the checkpoint on first start)"))
    index_url: str | None = Field(default=None, description=(
        "a shared index on PostgreSQL + pgvector (postgresql://…; index/pg.py) instead of `index`: every replica "
        "that serves it serves the same collections"))
    host: str = Field(default="127.0.0.1", description="bind address")
    port: int = Field(default=8000, description="port")
    api_key: str | None = Field(default=None, description=(
        "the admin key: every route and every collection need `Authorization: Bearer KEY` (except /health, "
        "/ready, the playground's static files)"))
    api_keys_file: Path | None = Field(default=None, description=(
        "keys scoped to collections (server/auth.py): a JSON list of {\"key_sha256\", \"collections\", "
        "\"access\": r|rw|admin}; read again when it changes or on SIGHUP"))
    metrics_public: bool = Field(default=False, description="open /metrics to a scraper without a key")
    engine: str = Field(default="hf", description="generation engine: hf (in-process transformers) or vllm")
    vllm_url: str = Field(default="http://127.0.0.1:8001", description="the vLLM OpenAI server (engine vllm)")
    vllm_model: str | None = Field(default=None, description=(
        "vLLM's served model name (default: the first that /v1/models lists)"))
    vllm_max_model_len: int | None = Field(default=None, description=(
        "the context budget with engine vllm (default: what vLLM reports)"))
    vllm_timeout_s: float = Field(default=60.0, description="seconds a call to vLLM may take")
    embed_engine: str = Field(default="hf", pattern="^(hf|vllm)$", description=(
        "where /embed, queries and ingestion are embedded: hf (this process) or vllm (a vLLM pooling runner on "
        "CKPT/backbone at vllm_embed_url: per-token hidden states; slice pooling and the heads applied here)"))
    vllm_embed_url: str = Field(default="http://127.0.0.1:8002",
                                description="the vLLM pooling server (embed_engine vllm)")
    vllm_embed_model: str | None = Field(default=None,
                                         description="the pooling server's model name (default: its first)")
    threads: int = Field(default=0,
                         description="CPU threads of torch and of the GA kernel's numba forward (0: their defaults)")
    device: str = Field(default="auto", description=(
        "where embedding and in-process generation run: auto (CUDA when present), cpu, cuda or cuda:N; cuda "
        "without a GPU is refused at start-up, never a silent fallback"))
    dtype: str = Field(default="float32", description=(
        "the backbone's dtype: float32, bfloat16, or float16 (GPU); build and serve an index with one dtype"))
    served_model_name: str = Field(default="sugar", description=(
        "the model name of the OpenAI routes (NAME@collection names a collection)"))
    allow_paths: list[Path] = Field(default_factory=list, description=(
        "directories a request may name image paths in (resolved, regular files only); none by default"))
    allow_urls: list[str] = Field(default_factory=list, description=(
        "URL prefixes a request may name images by: http(s)://host[:port][/path] (server/urls.py); none by "
        "default"))
    allow_private_urls: bool = Field(default=False, description=(
        "let allow-listed URLs resolve to loopback or private addresses"))
    max_body_bytes: int = Field(default=32 * 1024 * 1024, description="request body limit (413 beyond)")
    body_timeout_s: float = Field(default=30.0, description="the whole request body must arrive within this (408)")
    max_image_pixels: int = Field(default=4096 * 4096, description="pixels of one image, counted from its header")
    max_request_pixels: int = Field(default=4 * 4096 * 4096, description=(
        "decoded pixels of all the images one request carries (uploads: all their files, PDF pages and embedded "
        "images included); 0: no budget beyond the per-image limit"))
    max_image_aspect: float = Field(default=20.0, description="longer side / shorter side of an image")
    max_image_bytes: int = Field(default=16 * 1024 * 1024, description="encoded bytes of one image")
    image_formats: list[str] = Field(default_factory=lambda: ["PNG", "JPEG", "WEBP", "GIF", "BMP"],
                                     description="image formats accepted")
    max_slices: int = Field(default=64, description="slices of one sample")
    max_text_chars: int = Field(default=16_384, description="characters of one text slice")
    max_samples_per_request: int = Field(default=64, description=(
        "samples of one /embed, /v1/embeddings, /retrieve batch, and documents of one /v1/rerank (per side of "
        "/score)"))
    max_k: int = Field(default=100, description="the largest k a search may ask (k_prime: 10x)")
    max_tokens_limit: int = Field(default=512, description="the largest max_tokens a generation may ask")
    max_input_tokens: int = Field(default=0, description=(
        "tokens of one sample's embedding prompt (images count their tokens); 0: the model's context"))
    default_max_tokens: int = Field(default=64, description="max_tokens of a generation that does not say")
    embed_queue_size: int = Field(default=256, description="samples waiting to be embedded; beyond: 429")
    embed_max_batch: int = Field(default=32, description="samples in one embedding micro-batch")
    embed_max_wait_ms: float = Field(default=5.0, description=(
        "how long a micro-batch waits for company, only while requests arrive closer together than this"))
    embed_batch_tokens: int = Field(default=4096, ge=0, description=(
        "a micro-batch's estimated cost (tokens of its longest sample x its size): a big request is split so "
        "that small ones behind it wait for one micro-batch, not the whole request"))
    gen_queue_size: int = Field(default=64, description="generation requests waiting or running; beyond: 429")
    gen_timeout_s: float = Field(default=120.0, description="seconds one generation may take (503 beyond)")
    retrieval_k: int = Field(default=3, description="documents a generation retrieves when the request does not say")
    retrieval_mode: str = Field(default="hybrid", pattern="^(dense|hybrid|lexical)$", description=(
        "how /retrieve, /generate and chat rank when a request does not say: hybrid (the GA-kernel ranking "
        "fused with BM25 over the documents' text), dense or lexical"))
    retrieval_lexical_weight: float = Field(default=0.6, ge=0.0, le=1.0,
                                            description="hybrid: BM25's share of the fused score")
    ready_cache_s: float = Field(default=5.0, description="seconds /ready reuses its last canary's verdict")
    snapshot_every: int = Field(default=1000, ge=1, description="index writes between FAISS snapshots")
    max_collections: int = Field(default=100, ge=1, le=10_000, description=(
        "collections beside the default one (PUT /collections/{name})"))
    max_upload_files: int = Field(default=32, description="files of one POST /documents/upload")
    max_upload_file_bytes: int = Field(default=16 * 1024 * 1024, description="bytes of one uploaded file")
    pdf_page_images: str = Field(default="auto", pattern="^(auto|always|never)$", description=(
        "add each rendered PDF page as an image: auto (pages without a text layer), always, never"))
    ingest_workers: int = Field(default=1, ge=0, le=64, description=(
        "processes that read and chunk uploads (server/workers.py); 0: read in the serving process"))
    ingest_queue: int = Field(default=8, ge=0, description="uploads that may wait for a worker; beyond: 429")
    ingest_timeout_s: float = Field(default=60.0, gt=0, description=(
        "an upload still being read after this has its worker replaced and is refused (422)"))

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
