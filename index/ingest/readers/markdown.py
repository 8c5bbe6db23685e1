"""Markdown (CommonMark + tables, via markdown-it-py) -> blocks in document order.

Headings become heading blocks; paragraphs, list items, block quotes, code
and table rows become text blocks; `![alt](src)` becomes an image block in
place (its alt text kept beside it), resolved through `ReadOptions.resolve`
(paths relative to the file) or decoded from a `data:` URI.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markdown_it.token import Token

from .base import Block, Parsed, ReadOptions, decode_text, resolve_image


def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark").enable("table")


def _inline_parts(tok: Token) -> list[tuple[str, ...]]:
    """An inline token -> [("text", str) | ("image", src, alt)...] in order."""
    parts: list = []
    buf: list[str] = []
    for child in tok.children or []:
        t = child.type
        if t in ("text", "code_inline", "html_inline"):
            if t != "html_inline":
                buf.append(child.content)
        elif t in ("softbreak",):
            buf.append(" ")
        elif t == "hardbreak":
            buf.append("\n")
        elif t == "image":
            if "".join(buf).strip():
                parts.append(("text", "".join(buf).strip()))
            buf = []
            alt = "".join(c.content for c in child.children or []) or child.content
            parts.append(("image", str(child.attrGet("src") or ""), alt.strip()))
    if "".join(buf).strip():
        parts.append(("text", "".join(buf).strip()))
    return parts


def read_markdown(data: bytes, name: str, opts: ReadOptions) -> Parsed:
    text = decode_text(data)
    tokens = _parser().parse(text)
    parsed = Parsed(format="markdown", title="")
    heading_level = 0
    list_depth = 0
    row: list[str] = []
    in_cell = False
    for i, tok in enumerate(tokens):
        t = tok.type
        if t == "heading_open":
            heading_level = int(tok.tag[1])
        elif t == "heading_close":
            heading_level = 0
        elif t in ("bullet_list_open", "ordered_list_open"):
            list_depth += 1
        elif t in ("bullet_list_close", "ordered_list_close"):
            list_depth -= 1
        elif t == "tr_open":
            row = []
        elif t == "tr_close":
            if any(c.strip() for c in row):
                parsed.blocks.append(Block("text", " | ".join(row)))
        elif t in ("th_open", "td_open"):
            in_cell = True
        elif t in ("th_close", "td_close"):
            in_cell = False
        elif t in ("fence", "code_block"):
            if tok.content.strip():
                parsed.blocks.append(Block("text", tok.content.rstrip("\n")))
        elif t == "html_block":
            from .html import html_text

            content = html_text(tok.content)
            if content:
                parsed.blocks.append(Block("text", content))
        elif t == "inline":
            parts = _inline_parts(tok)
            if in_cell:
                row.append(" ".join(p[1] for p in parts if p[0] == "text"))
                continue
            if heading_level:
                title = " ".join(p[1] for p in parts if p[0] == "text")
                if title:
                    parsed.blocks.append(Block("heading", title, level=heading_level))
                    if heading_level == 1 and not parsed.title:
                        parsed.title = title
                continue
            bullet = "- " if list_depth and tokens[i - 1].type == "paragraph_open" and _in_item(tokens, i) else ""
            for p in parts:
                if p[0] == "text":
                    parsed.blocks.append(Block("text", bullet + p[1]))
                    bullet = ""
                else:
                    src, alt = p[1], p[2]
                    img = resolve_image(src, opts, f"{name}: image {src!r}", parsed)
                    if img is not None:
                        parsed.blocks.append(Block("image", alt, image=img))
                    elif alt:
                        parsed.blocks.append(Block("text", alt))
    return parsed


def _in_item(tokens: list[Token], i: int) -> bool:
    """The paragraph at i - 1 is the first one of a list item."""
    return i >= 2 and tokens[i - 2].type == "list_item_open"
