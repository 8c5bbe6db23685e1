"""index/ingest/: files as users have them -> chunks in the index, through one write path.

    readers/    bytes -> ordered interleaved blocks (Markdown, HTML, PDF, images, text)
    chunking    blocks -> samples within the model's context budget, stable ids
    pipeline    `SourceReader` (read + chunk: bytes in, `Chunked` out, no index: it runs in the
                server's worker processes too), `Ingestor.plan(sources) -> [SourcePlan]` (the
                changed sources read, then diffed against the store, nothing written) and
                `write(index, plans, embed, version)`: the one function that embeds and writes, for
                every writer (uploads, POST/PUT /documents, /embed with store, `sugar index add`,
                the default-index build, `reembed`)
"""

from .pipeline import (
    UPLOAD_PREFIX,
    Chunked,
    Embed,
    FileResult,
    IngestConfig,
    Ingestor,
    SourceFile,
    SourcePlan,
    SourceReader,
    SyncSummary,
    pair_uploads,
    reembed,
    walk,
    write,
)

__all__ = ["UPLOAD_PREFIX", "Chunked", "Embed", "FileResult", "IngestConfig", "Ingestor", "SourceFile",
           "SourcePlan", "SourceReader", "SyncSummary", "pair_uploads", "reembed", "walk", "write"]
