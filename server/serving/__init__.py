"""The serving layer: between the thin routers (server/routes/) and the service.

Per endpoint family a module builds the responses and streams from what the service returns
(`native`, `openai`, `documents`), converts wire inputs into service inputs (chat messages into
samples, embeddings inputs), and frames server-sent events (`sse`). The wire models
(server/protocol/) stay a leaf of plain pydantic: they import nothing from here, the service,
the engines or the index.
"""
