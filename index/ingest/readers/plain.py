"""Images (PNG/JPEG/WebP/GIF first frame, with an optional sidecar caption) and plain text."""

from __future__ import annotations

from pathlib import PurePath

from .base import Block, Parsed, ReadOptions, decode_text, load_image


def read_image(data: bytes, name: str, opts: ReadOptions, caption: str = "") -> Parsed:
    img = load_image(data, name, opts.limits)
    parsed = Parsed(format="image", title=PurePath(name).stem)
    parsed.blocks.append(Block("image", "", image=img))
    if caption.strip():
        parsed.blocks.append(Block("text", caption.strip()))
    return parsed


def read_text(data: bytes, name: str, opts: ReadOptions) -> Parsed:
    text = decode_text(data)
    parsed = Parsed(format="text", title=PurePath(name).stem)
    for para in text.replace("\r\n", "\n").split("\n\n"):
        para = para.strip()
        if para:
            parsed.blocks.append(Block("text", para))
    return parsed
