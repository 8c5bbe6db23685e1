"""Interleaved samples: an ordered list of slices, each a text span or an image.

Invariants:
- an image slice always holds a decoded RGB `PIL.Image` (converted once, here);
- every limit is checked when a sample is built and violations raise
  `SampleError` naming the offending field — nothing is truncated silently;
- `Sample.from_dict` reads the wire/JSONL slice schema
  (`{"type": "text", "text": ...}`, `{"type": "image", "base64"|"path"|"url": ...}`);
  local paths and URLs are only read when the caller passes a resolver that
  allows them (the JSONL reader resolves paths relative to its file; the
  server refuses both unless an operator allow-lists them).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image

SliceType = Literal["text", "image"]


class SampleError(ValueError):
    """A sample or slice violates the schema or a limit; `field` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SampleLimits:
    max_slices: int = 64
    max_text_chars: int = 16_384
    max_image_pixels: int = 4096 * 4096
    # the processor resizes the short side to the model's input size, so a 1 x 400,000
    # image becomes 400,000 x 64 (GBs) before it is cropped: bound the aspect ratio
    max_image_aspect: float = 20.0
    max_image_bytes: int = 20 * 1024 * 1024
    image_formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


DEFAULT_LIMITS = SampleLimits()


class BudgetExceeded(SampleError):
    """The request's images together exceed its pixel budget: the request is refused, never
    an image silently skipped."""


class PixelBudget:
    """Decoded pixels one request may cost, over all its images (each image is also bounded
    by `SampleLimits.max_image_pixels`). Charged from an image's header, before its pixels
    are decoded; `pixel_budget` makes one the current budget of a request (a context
    variable: threads started with the request's context charge the same budget)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._lock = threading.Lock()

    def charge(self, pixels: int, where: str) -> None:
        with self._lock:
            if self.used + pixels > self.limit:
                raise BudgetExceeded(where, f"{pixels} more pixels exceed the request's budget of {self.limit} "
                                         f"decoded pixels ({self.used} used by its earlier images)")
            self.used += pixels


_BUDGET: ContextVar[PixelBudget | None] = ContextVar("sugar_pixel_budget", default=None)


@contextmanager
def pixel_budget(limit: int | None) -> Iterator[PixelBudget | None]:
    """Within the block, every decoded image (`decode_image`, PDF pages and embedded images)
    is charged to one budget of `limit` pixels (None: no budget)."""
    budget = PixelBudget(limit) if limit else None
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


def charge_pixels(pixels: int, where: str) -> None:
    """Charge the current request's pixel budget (none outside one); SampleError beyond it."""
    budget = _BUDGET.get()
    if budget is not None:
        budget.charge(pixels, where)


# Document ids: what a URL path segment carries unescaped and a file name can hold; no "/",
# no leading "." (no "..", no hidden names). The server's routes and the ingestion of JSONL
# documents both enforce it (a stored id outside it could not be read back).
DOCUMENT_ID = r"^[A-Za-z0-9_][A-Za-z0-9._:@+-]{0,255}$"
BLANK = " \t\n\r\f\v"  # what makes a text slice empty (ASCII whitespace; the API schema spells out the same class)


@dataclass(frozen=True)
class Slice:
    type: SliceType
    text: str | None = None
    image: Image.Image | None = None
    _png: bytes | None = field(default=None, compare=False, repr=False)

    @staticmethod
    def of_text(text: str) -> Slice:
        return Slice("text", text=text)

    @staticmethod
    def of_image(image: Image.Image) -> Slice:
        return Slice("image", image=image)

    def png(self) -> bytes:
        """The image as stored (PNG), encoded once per slice."""
        if self._png is None:
            assert self.image is not None
            object.__setattr__(self, "_png", encode_png(self.image))
        return self._png  # type: ignore[return-value]

    def content_hash(self) -> str:
        """A stable hash of the slice content (text bytes, or RGB pixels + size)."""
        h = hashlib.sha256()
        if self.type == "text":
            assert self.text is not None
            h.update(b"t\0" + self.text.encode("utf-8"))
        else:
            assert self.image is not None
            h.update(b"i\0" + f"{self.image.width}x{self.image.height}".encode())
            h.update(self.image.tobytes())
        return h.hexdigest()


@dataclass
class Sample:
    slices: list[Slice]
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def images(self) -> list[Image.Image]:
        return [s.image for s in self.slices if s.type == "image"]  # type: ignore[misc]

    @property
    def modalities(self) -> list[str]:
        return [s.type for s in self.slices]

    def text(self) -> str:
        """The text slices joined by newlines (images left out)."""
        return "\n".join(s.text or "" for s in self.slices if s.type == "text")

    @staticmethod
    def build(
        parts: Sequence[str | Image.Image | bytes | Slice],
        *,
        id: str | None = None,
        metadata: dict[str, Any] | None = None,
        limits: SampleLimits = DEFAULT_LIMITS,
    ) -> Sample:
        """Build from Python values: str is text; PIL images and raw bytes are images."""
        slices: list[Slice] = []
        for i, part in enumerate(parts):
            where = f"slices[{i}]"
            if isinstance(part, Slice):
                slices.append(part)
            elif isinstance(part, str):
                slices.append(Slice.of_text(part))
            elif isinstance(part, Image.Image):
                slices.append(Slice.of_image(to_rgb(part, where, limits)))
            elif isinstance(part, (bytes, bytearray)):
                slices.append(Slice.of_image(decode_image(bytes(part), where, limits)))
            else:
                raise SampleError(where, f"unsupported slice value of type {type(part).__name__}")
        sample = Sample(slices=slices, id=id, metadata=dict(metadata or {}))
        validate(sample, limits)
        return sample

    @staticmethod
    def from_dict(
        data: Any,
        *,
        limits: SampleLimits = DEFAULT_LIMITS,
        resolve_path: Callable[[str, str], bytes] | None = None,
        resolve_url: Callable[[str, str], bytes] | None = None,
        where: str = "sample",
    ) -> Sample:
        """Parse the slice schema. `resolve_*(value, field) -> bytes` read paths/URLs."""
        if not isinstance(data, dict):
            raise SampleError(where, "must be an object with a 'slices' list")
        unknown = sorted(set(data) - {"id", "slices", "metadata"})
        if unknown:
            raise SampleError(where, f"unknown fields {unknown}")
        raw_slices = data.get("slices")
        if not isinstance(raw_slices, list):
            raise SampleError(f"{where}.slices", "must be a list")
        if len(raw_slices) > limits.max_slices:
            raise SampleError(
                f"{where}.slices", f"{len(raw_slices)} slices exceed the limit of {limits.max_slices}"
            )
        sid = data.get("id")
        if sid is not None and not isinstance(sid, str):
            raise SampleError(f"{where}.id", "must be a string")
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise SampleError(f"{where}.metadata", "must be an object")
        slices = [
            slice_from_dict(s, f"{where}.slices[{i}]", limits, resolve_path, resolve_url)
            for i, s in enumerate(raw_slices)
        ]
        sample = Sample(slices=slices, id=sid, metadata=metadata)
        validate(sample, limits, where)
        return sample

    def to_dict(self, image_encoder: Callable[[Image.Image], dict[str, str]] | None = None) -> dict:
        """The slice schema; images as base64 PNG unless `image_encoder` says otherwise."""
        enc = image_encoder or (lambda im: {"base64": encode_png_base64(im)})
        out: dict[str, Any] = {"slices": []}
        if self.id is not None:
            out["id"] = self.id
        if self.metadata:
            out["metadata"] = self.metadata
        for s in self.slices:
            if s.type == "text":
                out["slices"].append({"type": "text", "text": s.text})
            else:
                out["slices"].append({"type": "image", **enc(s.image)})  # type: ignore[arg-type]
        return out


def slice_from_dict(
    data: Any,
    where: str,
    limits: SampleLimits = DEFAULT_LIMITS,
    resolve_path: Callable[[str, str], bytes] | None = None,
    resolve_url: Callable[[str, str], bytes] | None = None,
) -> Slice:
    if not isinstance(data, dict):
        raise SampleError(where, "must be an object with a 'type'")
    kind = data.get("type")
    if kind == "text":
        unknown = sorted(set(data) - {"type", "text"})
        if unknown:
            raise SampleError(where, f"unknown fields {unknown}")
        text = data.get("text")
        if not isinstance(text, str):
            raise SampleError(f"{where}.text", "must be a string")
        return Slice.of_text(text)
    if kind == "image":
        sources = [k for k in ("base64", "path", "url") if k in data]
        unknown = sorted(set(data) - {"type", "base64", "path", "url"})
        if unknown:
            raise SampleError(where, f"unknown fields {unknown}")
        if len(sources) != 1:
            raise SampleError(where, "an image slice needs exactly one of 'base64', 'path', 'url'")
        key = sources[0]
        value = data[key]
        if not isinstance(value, str):
            raise SampleError(f"{where}.{key}", "must be a string")
        if key == "base64":
            raw = decode_base64(value, f"{where}.base64", limits)
        elif key == "path":
            if resolve_path is None:
                raise SampleError(f"{where}.path", "image paths are not allowed here")
            raw = resolve_path(value, f"{where}.path")
        else:
            if resolve_url is None:
                raise SampleError(f"{where}.url", "image URLs are not allowed here")
            raw = resolve_url(value, f"{where}.url")
        return Slice.of_image(decode_image(raw, f"{where}.{key}", limits))
    raise SampleError(f"{where}.type", f"must be 'text' or 'image', got {kind!r}")


def validate(sample: Sample, limits: SampleLimits = DEFAULT_LIMITS, where: str = "sample") -> None:
    if not sample.slices:
        raise SampleError(f"{where}.slices", "a sample needs at least one slice")
    if len(sample.slices) > limits.max_slices:
        raise SampleError(
            f"{where}.slices",
            f"{len(sample.slices)} slices exceed the limit of {limits.max_slices}",
        )
    for i, s in enumerate(sample.slices):
        f = f"{where}.slices[{i}]"
        if s.type == "text":
            if not isinstance(s.text, str):
                raise SampleError(f"{f}.text", "must be a string")
            if len(s.text) > limits.max_text_chars:
                raise SampleError(
                    f"{f}.text",
                    f"{len(s.text)} characters exceed the limit of {limits.max_text_chars}",
                )
            if "\x00" in s.text:
                raise SampleError(f"{f}.text", "contains a NUL character")
            if not s.text.strip(BLANK):
                raise SampleError(f"{f}.text", "is empty")
        elif s.type == "image":
            if s.image is None:
                raise SampleError(f, "image slice without an image")
        else:
            raise SampleError(f"{f}.type", f"must be 'text' or 'image', got {s.type!r}")


def decode_base64(value: str, where: str, limits: SampleLimits = DEFAULT_LIMITS) -> bytes:
    if value.startswith("data:"):
        # data URL: data:image/png;base64,....
        head, _, value = value.partition(",")
        if ";base64" not in head:
            raise SampleError(where, "data URL must be base64-encoded")
    # base64 is 4/3 of the payload: refuse oversized input before decoding it
    if len(value) > (limits.max_image_bytes * 4) // 3 + 8:
        raise SampleError(where, f"encoded image exceeds {limits.max_image_bytes} bytes")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise SampleError(where, f"invalid base64 ({e})") from None


def decode_image(raw: bytes, where: str, limits: SampleLimits = DEFAULT_LIMITS, charge: bool = True) -> Image.Image:
    """Decode bytes into an RGB image, checking size and pixels before decoding pixels; the
    pixels are charged to the request's budget (`pixel_budget`) unless `charge` is False
    (images the server stored itself)."""
    if len(raw) > limits.max_image_bytes:
        raise SampleError(where, f"{len(raw)} bytes exceed the limit of {limits.max_image_bytes}")
    if not raw:
        raise SampleError(where, "empty image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            fmt = img.format or "?"
            if fmt not in limits.image_formats:
                raise SampleError(
                    where, f"image format {fmt} not accepted (accepted: {list(limits.image_formats)})"
                )
            w, h = img.size
            if w * h > limits.max_image_pixels:
                raise SampleError(
                    where, f"image of {w}x{h} pixels exceeds the limit of {limits.max_image_pixels}"
                )
            if w == 0 or h == 0:
                raise SampleError(where, "image has no pixels")
            check_aspect(w, h, where, limits)
            if charge:
                charge_pixels(w * h, where)
            img.seek(0)  # animated images: the first frame
            img.load()
    except SampleError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SampleError(where, f"image refused as a decompression bomb ({e})") from None
    except Exception as e:  # PIL raises many types for corrupt data
        raise SampleError(where, f"cannot decode image ({type(e).__name__}: {e})") from None
    return to_rgb(img, where, limits)


def check_aspect(w: int, h: int, where: str, limits: SampleLimits) -> None:
    if w and h and max(w, h) / min(w, h) > limits.max_image_aspect:
        raise SampleError(where, f"image of {w}x{h} pixels has an aspect ratio above the limit of "
                                 f"{limits.max_image_aspect:g}")


def to_rgb(img: Image.Image, where: str, limits: SampleLimits = DEFAULT_LIMITS) -> Image.Image:
    w, h = img.size
    if w * h > limits.max_image_pixels:
        raise SampleError(
            where, f"image of {w}x{h} pixels exceeds the limit of {limits.max_image_pixels}"
        )
    check_aspect(w, h, where, limits)
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits rather than clipping to white
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = float(arr.max()) or 1.0
        img = Image.fromarray(np.rint(arr * (255.0 / hi)).clip(0, 255).astype("uint8"), mode="L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


def encode_png_base64(img: Image.Image) -> str:
    return base64.b64encode(encode_png(img)).decode("ascii")


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
