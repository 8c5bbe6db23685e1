"""The OpenAPI document as the server enforces it: the operator's runtime limits and allow-lists
written into the schemas pydantic generated, and the filter grammar published once."""

from __future__ import annotations


def apply_limits(schema: dict, settings, dim: int | None = None) -> dict:
    """Write the operator's runtime limits into the OpenAPI document, so what the schema
    admits is what the server accepts (maxItems, maxLength, maximum); `dim`: the checkpoint's
    embedding dimension (the only `dimensions` /v1/embeddings takes)."""
    comps = schema.get("components", {}).get("schemas", {})
    from model.filters import filter_schemas

    comps.update(filter_schemas())

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
    if not settings.allow_urls:  # chat images and Infinity's image inputs: data URLs only
        comps.get("ChatImageURL", {}).get("properties", {}).get("url", {})["pattern"] = "^data:"
        images = comps.get("EmbeddingsRequest", {}).get("then", {}).get("properties", {}).get("input", {})
        for node in images.get("anyOf", []):
            (node if node.get("type") == "string" else node.get("items", {}))["pattern"] = "^data:"
    for model in ("SampleIn", "DocumentIn"):
        prop(model, "slices")["maxItems"] = settings.max_slices
    prop("TextSlice", "text")["maxLength"] = settings.max_text_chars
    prop("EmbedRequest", "samples")["maxItems"] = settings.max_samples_per_request
    for node in arrays(prop("EmbeddingsRequest", "input")):
        if node.get("type") == "array":
            node["maxItems"] = settings.max_samples_per_request
        elif node.get("type") == "string":
            node["maxLength"] = settings.max_text_chars
    if dim is not None:
        for node in arrays(prop("EmbeddingsRequest", "dimensions")):
            if node.get("type") == "integer":
                node["minimum"] = node["maximum"] = dim
    # several samples in one request: rerank's documents, score's sides, retrieve's batch
    for model, name in (("RerankRequest", "documents"), ("RerankRequest", "texts"), ("RetrieveRequest", "queries"),
                        *(("ScoreRequest", side) for side in ("text_1", "text_2", "queries", "documents"))):
        for node in arrays(prop(model, name)):
            if node.get("type") == "array":
                node["maxItems"] = settings.max_samples_per_request
    _text_limit(comps, settings.max_text_chars)
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


def _text_limit(comps: dict, max_chars: int) -> None:
    """Every non-blank text on the wire becomes a text slice: at most `max_chars` characters."""
    from .protocol.common import NON_BLANK

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "string" and node.get("pattern") == NON_BLANK:
                node.setdefault("maxLength", max_chars)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(comps)


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
