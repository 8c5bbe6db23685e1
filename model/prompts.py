"""The prompt formats: embedding, generation, RAG context, chat.

One place builds every prompt string, so training, the server's in-process
engine and a vLLM server (through the tokenizer's chat template, rendered by
`chat_template()`) all see byte-identical prompts. A prompt is a list of
*parts* (text strings or images) joined by the slice separator after the user
prefix; images appear as one placeholder each, which the processor expands
into the vision tokens.

    generation:  USER: <slice 1>\\n<slice 2> ASSISTANT:
    RAG:         USER: Context:\\n[1]\\n<doc 1 slices>\\n[2]\\n...\\nQuestion: \\n<query slices> ASSISTANT:
                 (context_order "best_last": ...[2]\\n<doc 2 slices>\\n[1]\\n<doc 1 slices>\\nQuestion: ...)
    embedding:   USER: <slice 1>\\n<slice 2>          (no suffix: the model is causal)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .config import PromptFormat
from .sample import Sample, SampleError, Slice

Part = str | Image.Image


@dataclass
class Prompt:
    """Rendered prompt text with one placeholder per image, images in order.

    `spans[k]` is the [start, end) character range of part k in `text` for the
    parts that carry slices (embedding prompts: every slice of the sample).
    """

    text: str
    images: list[Image.Image] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)


def _check_text(text: str, fmt: PromptFormat, where: str) -> None:
    if fmt.image_placeholder in text:
        raise SampleError(where, f"text contains the reserved image placeholder {fmt.image_placeholder!r}")


def render_parts(parts: Sequence[Part], fmt: PromptFormat, prefix: str) -> Prompt:
    """prefix + separator-joined parts; spans cover each part."""
    text = prefix
    out = Prompt(text="")
    for k, part in enumerate(parts):
        if k:
            text += fmt.slice_separator
        start = len(text)
        if isinstance(part, str):
            _check_text(part, fmt, f"slices[{k}].text")
            text += part
            out.modalities.append("text")
        else:
            text += fmt.image_placeholder
            out.images.append(part)
            out.modalities.append("image")
        out.spans.append((start, len(text)))
    out.text = text
    return out


def slice_parts(slices: Sequence[Slice]) -> list[Part]:
    return [s.text if s.type == "text" else s.image for s in slices]  # type: ignore[misc]


def embedding_prompt(sample: Sample, fmt: PromptFormat) -> Prompt:
    return render_parts(slice_parts(sample.slices), fmt, fmt.user_prefix)


def rag_parts(documents: Sequence[Sample], query: Sample, fmt: PromptFormat) -> list[Part]:
    """The user-message parts of a RAG prompt (documents as context, then the query).

    `documents` come best first and are numbered by rank; `fmt.context_order` "best_last"
    writes them in reverse ([k] first, [1] just before the question), so a prompt with its
    lowest-ranked documents left out is the full one with one span removed either way."""
    parts: list[Part] = []
    if documents:
        parts.append(fmt.context_header)
        ranked = list(enumerate(documents, 1))
        for i, doc in reversed(ranked) if fmt.context_order == "best_last" else ranked:
            parts.append(fmt.document_prefix.format(i=i).rstrip())
            parts.extend(slice_parts(doc.slices))
        parts.append(fmt.question_header.rstrip())
    parts.extend(slice_parts(query.slices))
    return parts


def generation_prompt(
    query: Sample, fmt: PromptFormat, documents: Sequence[Sample] = ()
) -> Prompt:
    """The prompt the engines decode from (with RAG context when documents are given)."""
    return chat_prompt([("user", rag_parts(documents, query, fmt))], fmt)


def chat_prompt(
    messages: Sequence[tuple[str, Sequence[Part]]],
    fmt: PromptFormat,
    eos: str = "</s>",
    add_generation_prompt: bool = True,
) -> Prompt:
    """Render (role, parts) messages exactly as `chat_template()` does."""
    text = ""
    images: list[Image.Image] = []
    for role, parts in messages:
        if role == "assistant":
            body = render_parts(parts, fmt, "")
            text += fmt.assistant_prefix + " " + body.text + eos
        elif role == "system":
            body = render_parts(parts, fmt, "")
            text += body.text + fmt.slice_separator
        elif role == "user":
            body = render_parts(parts, fmt, fmt.user_prefix)
            text += body.text
        else:
            raise SampleError("messages.role", f"unknown role {role!r}")
        images.extend(body.images)
    if add_generation_prompt:
        text += fmt.assistant_prefix
    return Prompt(text=text, images=images)


def answer_text(answer: str, eos: str = "</s>") -> str:
    """What follows the assistant prefix in a training target."""
    return " " + answer + eos


# the one answer to a question the retrieved documents cannot answer (trained: training/phrasing.py;
# served: a checkpoint with `abstain_threshold` answers it, with finish_reason "abstained")
ABSTAIN_ANSWER = "not in the documents"


def chat_template(fmt: PromptFormat, eos: str = "</s>") -> str:
    """Jinja chat template equivalent to `chat_prompt` (content: string or parts)."""

    def lit(s: str) -> str:
        return "{{ " + repr(s) + " }}"

    sep = repr(fmt.slice_separator)
    ph = repr(fmt.image_placeholder)
    parts = (
        "{%- if message['content'] is string -%}{{ message['content'] }}"
        "{%- else -%}{%- for part in message['content'] -%}"
        "{%- if not loop.first -%}{{ " + sep + " }}{%- endif -%}"
        "{%- if part['type'] == 'text' -%}{{ part['text'] }}"
        "{%- else -%}{{ " + ph + " }}{%- endif -%}"
        "{%- endfor -%}{%- endif -%}"
    )
    return (
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'user' -%}" + lit(fmt.user_prefix) + parts
        + "{%- elif message['role'] == 'assistant' -%}" + lit(fmt.assistant_prefix + " ") + parts
        + lit(eos)
        + "{%- elif message['role'] == 'system' -%}" + parts + "{{ " + sep + " }}"
        + "{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}" + lit(fmt.assistant_prefix) + "{%- endif -%}"
    )


def openai_parts(parts: Sequence[Part]) -> list[dict[str, Any]]:
    """Parts as chat-template content items (images as typed placeholders)."""
    return [{"type": "text", "text": p} if isinstance(p, str) else {"type": "image"} for p in parts]
