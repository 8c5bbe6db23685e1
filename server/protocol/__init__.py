"""Wire schemas (pydantic), one module per endpoint family, kept apart from the engines:

    common      validators, samples and slices, retrieval options, usage, errors, health
    native      /embed, /retrieve, /generate (+ the builders its JSON and stream share)
    documents   /documents, uploads, /index/stats, /collections
    openai      /v1 (typed responses and stream chunks)

Routers import this package as `P`; every name is re-exported here.
"""

from __future__ import annotations

from .common import (
    ASCII,
    COLLECTION_PATTERN,
    ID_PATTERN,
    INT64,
    MAX_JSON_DEPTH,
    NON_BLANK,
    TEMPERATURE_FLOOR,
    CollectionName,
    ErrorBody,
    Filters,
    Health,
    ImageSlice,
    JsonObject,
    LexicalWeight,
    NonBlankText,
    RetrievalOptions,
    SampleIn,
    SearchMode,
    SliceIn,
    SliceOut,
    Strict,
    Temperature,
    Text,
    TextSlice,
    Usage,
    Wire,
    check_json,
    slices_out,
)
from .documents import (
    CollectionAck,
    CollectionInfo,
    CollectionList,
    DocumentAck,
    DocumentIn,
    DocumentList,
    DocumentOut,
    IndexStats,
    UploadedFile,
    UploadResponse,
    UploadSummary,
)
from .native import (
    DocumentScore,
    EmbeddingItem,
    EmbedRequest,
    EmbedResponse,
    GenerateRequest,
    GenerateResponse,
    RetrievedDocument,
    RetrieveRequest,
    RetrieveResponse,
    SliceEmbedding,
    citation,
    generate_response,
    retrieved,
    timings,
    usage,
)
from .openai import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatContentPart,
    ChatDelta,
    ChatImagePart,
    ChatImageURL,
    ChatMessage,
    ChatResponseMessage,
    ChatTextPart,
    EmbeddingData,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbeddingsUsage,
    Loose,
    ModelCard,
    ModelList,
    StreamOptions,
    finish_reason,
)

__all__ = [
    "check_json",
    "ASCII",
    "ChatChoice",
    "ChatChunkChoice",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatCompletionRequest",
    "ChatContentPart",
    "ChatDelta",
    "ChatImagePart",
    "ChatImageURL",
    "ChatMessage",
    "ChatResponseMessage",
    "ChatTextPart",
    "COLLECTION_PATTERN",
    "CollectionAck",
    "CollectionInfo",
    "CollectionList",
    "CollectionName",
    "DocumentAck",
    "DocumentIn",
    "DocumentList",
    "DocumentOut",
    "DocumentScore",
    "EmbedRequest",
    "EmbedResponse",
    "EmbeddingData",
    "EmbeddingItem",
    "EmbeddingsRequest",
    "EmbeddingsResponse",
    "EmbeddingsUsage",
    "ErrorBody",
    "Filters",
    "GenerateRequest",
    "GenerateResponse",
    "Health",
    "ID_PATTERN",
    "INT64",
    "MAX_JSON_DEPTH",
    "ImageSlice",
    "IndexStats",
    "JsonObject",
    "LexicalWeight",
    "Loose",
    "ModelCard",
    "ModelList",
    "NON_BLANK",
    "NonBlankText",
    "RetrievalOptions",
    "RetrieveRequest",
    "RetrieveResponse",
    "RetrievedDocument",
    "SampleIn",
    "SearchMode",
    "SliceEmbedding",
    "SliceIn",
    "SliceOut",
    "StreamOptions",
    "Strict",
    "TEMPERATURE_FLOOR",
    "Temperature",
    "Text",
    "TextSlice",
    "UploadResponse",
    "UploadSummary",
    "UploadedFile",
    "Usage",
    "Wire",
    "citation",
    "finish_reason",
    "generate_response",
    "retrieved",
    "slices_out",
    "timings",
    "usage",
    "apply_limits",
]


def apply_limits(schema: dict, settings) -> dict:
    """Write the operator's runtime limits into the OpenAPI document, so what the schema
    admits is what the server accepts (maxItems, maxLength, maximum)."""
    comps = schema.get("components", {}).get("schemas", {})

    def prop(model: str, name: str) -> dict:
        return comps.get(model, {}).get("properties", {}).get(name, {})

    def arrays(node: dict):
        yield node
        yield from node.get("anyOf", [])

    # url and path sources exist only where the operator allow-listed them
    image = comps.get("ImageSlice", {})
    offered = {"base64"} | ({"url"} if settings.allow_urls else set()) | (
        {"path"} if settings.allow_paths else set())
    image["oneOf"] = [{"required": [k]} for k in ("base64", "url", "path") if k in offered]
    for k in {"url", "path"} - offered:
        image.get("properties", {}).pop(k, None)
    if not settings.allow_urls:  # chat images: data URLs only
        comps.get("ChatImageURL", {}).get("properties", {}).get("url", {})["pattern"] = "^data:"
    for model in ("SampleIn", "DocumentIn"):
        prop(model, "slices")["maxItems"] = settings.max_slices
    prop("TextSlice", "text")["maxLength"] = settings.max_text_chars
    prop("EmbedRequest", "samples")["maxItems"] = settings.max_samples_per_request
    for node in arrays(prop("EmbeddingsRequest", "input")):
        if node.get("type") == "array":
            node["maxItems"] = settings.max_samples_per_request
        elif node.get("type") == "string":
            node["maxLength"] = settings.max_text_chars
    prop("RetrieveRequest", "k")["maximum"] = settings.max_k
    prop("RetrieveRequest", "k_prime")["maximum"] = 10 * settings.max_k
    for model in ("GenerateRequest", "ChatCompletionRequest"):
        for name in ("max_tokens", "max_completion_tokens"):
            for node in arrays(prop(model, name)):
                if node.get("type") == "integer":
                    node["maximum"] = settings.max_tokens_limit
    for node in arrays(prop("RetrievalOptions", "k")):
        if node.get("type") == "integer":
            node["maximum"] = settings.max_k
    _upload_limits(schema, settings)
    return schema


def _upload_limits(schema: dict, settings) -> None:
    """The multipart upload's limits: the number of files and each file's bytes (JSON Schema
    cannot bound the sum of the parts; the request as a whole stays under max_body_bytes, which
    the description states)."""
    op = schema.get("paths", {}).get("/documents/upload", {}).get("post")
    if op is None:
        return
    ref = op["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    body = schema["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    files = body["properties"]["files"]
    files["maxItems"] = settings.max_upload_files
    files["items"]["maxLength"] = settings.max_upload_file_bytes
    op["description"] = (op.get("description", "") + f"\n\nLimits: at most {settings.max_upload_files} files, "
                         f"each at most {settings.max_upload_file_bytes} bytes, the whole request at most "
                         f"{settings.max_body_bytes} bytes (413 beyond it).").lstrip()
