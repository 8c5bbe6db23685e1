"""HTML (selectolax / Lexbor, an HTML5 parser) -> blocks in document order.

The main text (`<main>` or `<article>` when there is one, else `<body>`) is
walked in order: headings, paragraphs, list items, table rows, `<pre>` and
other block elements become blocks; `<img>` becomes an image block in place
(`alt`, or the `<figcaption>` of its `<figure>`, kept beside it). Scripts,
styles, navigation, forms and embedded objects are dropped. `data:` images
are decoded; other `src` go through `ReadOptions.resolve` (the server's URL
allow-list, or paths relative to the file), else they are skipped and counted.
The walk is iterative, and a document with more elements than
`ReadOptions.max_elements` is refused, so no nesting depth or size can blow
the stack or the memory ("HTML bombs"). Elements nested deeper than
`ReadOptions.max_html_depth` are refused before the parse, by a scan of the
tags (an HTML5 parser's work grows with the square of the nesting depth: 20k
nested `<div>` cost 0.4 s, 60k several seconds); elements the parser closes by
itself (`<p>`, `<li>`, `<td>`, ...) and void elements do not count.
"""

from __future__ import annotations

import re
from typing import Any

from selectolax.lexbor import LexborHTMLParser

from .base import Block, Parsed, ReadError, ReadOptions, decode_text, resolve_image

DROP = {"script", "style", "noscript", "template", "nav", "aside", "footer", "form", "button",
        "iframe", "object", "embed", "svg", "canvas", "select", "textarea", "head", "-comment"}
BLOCK = {"p", "div", "section", "article", "main", "header", "li", "dt", "dd", "blockquote", "pre",
         "tr", "table", "ul", "ol", "dl", "figure", "figcaption", "address", "hr", "br", "h1", "h2",
         "h3", "h4", "h5", "h6", "body", "caption", "details", "summary"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr",
        "param", "keygen", "frame", "basefont", "bgsound", "image"}
# closed by the parser when the next one opens: they never nest by themselves
IMPLIED_END = {"p", "li", "dt", "dd", "tr", "td", "th", "option", "optgroup", "thead", "tbody", "tfoot", "rb",
               "rt", "rp", "rtc", "colgroup", "caption", "html", "head", "body"}
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]{0,40})(?:\s[^>]*?)?(/?)>")
HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


def html_text(fragment: str) -> str:
    """The visible text of an HTML fragment (scripts and styles dropped)."""
    tree = LexborHTMLParser(fragment)
    for node in tree.css(",".join(sorted(t for t in DROP if not t.startswith("-")))):
        node.decompose()
    root = tree.body or tree.root
    return " ".join((root.text(separator=" ") if root else "").split())


def nesting_depth(text: str, stop_at: int) -> int:
    """How deep elements nest, from the tags alone (an upper bound: a comment or script that
    holds tags counts them; stops counting past `stop_at`)."""
    depth = peak = 0
    for m in _TAG.finditer(text):
        close, name, self_closing = m.groups()
        name = name.lower()
        if name in VOID or name in IMPLIED_END or self_closing:
            continue
        if close:
            depth = max(0, depth - 1)
            continue
        depth += 1
        if depth > peak:
            peak = depth
            if peak > stop_at:
                break
    return peak


def read_html(data: bytes, name: str, opts: ReadOptions) -> Parsed:
    text = decode_text(data)
    depth = nesting_depth(text, opts.max_html_depth)
    if depth > opts.max_html_depth:
        raise ReadError(f"HTML nested deeper than the limit of {opts.max_html_depth} elements")
    tree = LexborHTMLParser(text)
    n_elements = len(tree.css("*"))
    if n_elements > opts.max_elements:
        raise ReadError(f"HTML with {n_elements} elements exceeds the limit of {opts.max_elements}")
    title_node = tree.css_first("title")
    parsed = Parsed(format="html", title=" ".join(title_node.text().split()) if title_node else "")
    root = tree.css_first("main") or tree.css_first("article") or tree.body
    if root is None:
        return parsed
    buf: list[str] = []
    heading: list[int] = [0]  # level of the heading being read (0: none)
    figure_caption: dict[int, str] = {}

    def flush() -> None:
        content = " ".join("".join(buf).split()).strip(" |")
        buf.clear()
        if not content:
            return
        if heading[0]:
            parsed.blocks.append(Block("heading", content, level=heading[0]))
            if heading[0] == 1 and not parsed.title:
                parsed.title = content
        else:
            parsed.blocks.append(Block("text", content))

    # iterative depth-first walk: (node, entering)
    stack: list[tuple[Any, bool]] = [(root, True)]
    while stack:
        node, entering = stack.pop()
        tag = node.tag
        if not entering:
            if tag in BLOCK or tag in HEADINGS:
                flush()
                if tag in HEADINGS:
                    heading[0] = 0
            elif tag in ("td", "th"):
                buf.append(" | ")
            continue
        if tag in DROP:
            continue
        if tag == "figcaption" and node.parent is not None and figure_caption.get(node.parent.mem_id):
            continue  # already beside its image
        if tag == "-text":
            buf.append(node.text(deep=False))
            continue
        if tag == "img":
            src = (node.attributes.get("src") or "").strip()
            alt = (node.attributes.get("alt") or "").strip()
            fig = _figure_of(node)
            if fig is not None and not alt:
                key = fig.mem_id
                if key not in figure_caption:
                    cap = fig.css_first("figcaption")
                    figure_caption[key] = " ".join(cap.text().split()) if cap else ""
                alt = figure_caption[key]
            flush()
            img = resolve_image(src, opts, f"{name}: image {src[:80]!r}", parsed) if src else None
            if img is not None:
                parsed.blocks.append(Block("image", alt, image=img))
            elif alt:
                parsed.blocks.append(Block("text", alt))
            continue
        if tag in BLOCK or tag in HEADINGS:
            flush()
            if tag in HEADINGS:
                heading[0] = HEADINGS[tag]
        stack.append((node, False))
        children = []
        child = node.child
        while child is not None:
            children.append(child)
            child = child.next
        stack.extend((c, True) for c in reversed(children))
    flush()
    return parsed


def _figure_of(node):
    p = node.parent
    for _ in range(3):
        if p is None:
            return None
        if p.tag == "figure":
            return p
        p = p.parent
    return None
