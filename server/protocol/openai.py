"""OpenAI-compatible routes: /v1/models, /v1/embeddings, /v1/chat/completions — requests,
typed responses and stream chunks."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from .common import (
    NonBlankText,
    RetrievalOptions,
    SampleIn,
    Temperature,
    Usage,
    Wire,
    given,
    one_of,
)
from .native import DocumentScore


class Loose(Wire):
    """OpenAI routes accept (and log) fields we do not use, as vLLM does."""

    model_config = ConfigDict(extra="allow")


class ChatImageURL(Loose):
    url: str


class ChatTextPart(Loose):
    type: Literal["text"]
    text: NonBlankText


class ChatImagePart(Loose):
    type: Literal["image_url"]
    image_url: ChatImageURL


ChatContentPart = Annotated[ChatTextPart | ChatImagePart, Field(discriminator="type")]


class ChatMessage(Loose):
    # "developer" is OpenAI's newer name for "system" and is treated as one
    role: Literal["system", "developer", "user", "assistant"]
    content: NonBlankText | Annotated[list[ChatContentPart], Field(min_length=1)]


class StreamOptions(Loose):
    include_usage: StrictBool = False


class ChatCompletionRequest(Loose):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, json_schema_extra={
        "contains": {"type": "object", "properties": {"role": {"const": "user"}}, "required": ["role"]}})
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: Temperature | None = None
    n: int = Field(default=1, ge=1, le=1, description="one choice per request (n > 1 is not offered)")
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    retrieval: RetrievalOptions | None = None


class EmbeddingsRequest(Loose):
    """OpenAI's `input` (strings or Sugar samples); vLLM's chat-style `messages` (their content
    parts, text and `image_url`, embedded as one interleaved sample); Infinity's
    `modality: "image"` (each input string a data URI or an allow-listed image URL)."""

    model_config = ConfigDict(extra="allow", json_schema_extra=one_of(
        given("input"), given("messages"),
        **{"if": {"required": ["modality"], "properties": {"modality": {"const": "image"}}},
           "then": {"required": ["input"], "properties": {"input": {"anyOf": [{"type": "string"},
                                                       {"type": "array", "items": {"type": "string"}}]}}}}))

    model: str | None = None
    input: NonBlankText | Annotated[list[NonBlankText], Field(min_length=1)] | Annotated[
        list[SampleIn], Field(min_length=1)] | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = Field(default=None, description=(
        "vLLM's form: one embedding of the messages' content, in order"))
    modality: Literal["text", "image"] = Field(default="text", description=(
        "Infinity's form: \"image\" reads each input string as an image (a data URI or an allow-listed URL)"))
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, description=(
        "only the checkpoint's own dimension: it is not trained for truncated (Matryoshka) vectors"))

    @model_validator(mode="after")
    def _one_input(self) -> EmbeddingsRequest:
        if (self.input is None) == (self.messages is None):
            raise ValueError("give 'input' or 'messages' (vLLM's chat form), one of them")
        inputs = [self.input] if isinstance(self.input, str) else (self.input or [])
        if self.modality == "image" and (self.input is None or not all(isinstance(x, str) for x in inputs)):
            raise ValueError("modality 'image' takes 'input' as image URLs or data URIs (strings)")
        return self


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "sugar"
    max_model_len: int
    embedding_version: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # "base64": little-endian float32


class EmbeddingsUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingsUsage


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatResponseMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    retrieved: list[DocumentScore] = Field(description="the documents the answer was given")
    abstained: bool = Field(default=False, description="the retrieved documents cannot answer: the content is "
                            "the fixed answer 'not in the documents' (finish_reason stays 'stop' for OpenAI clients)")


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    """One event of a streamed chat completion. The first carries `retrieved`; with
    `stream_options.include_usage` a last one carries `usage` and no choices."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    retrieved: list[DocumentScore] | None = None
    usage: Usage | None = None
    abstained: bool | None = None  # on the last choice's chunk of an abstention
