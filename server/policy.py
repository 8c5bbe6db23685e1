"""The input policy: one set of rules for every way bytes enter the server.

JSON routes, `/v1` routes and multipart uploads (every format, JSONL included)
all read images through `InputPolicy`: paths only inside `SUGAR_ALLOW_PATHS`
and only regular files, URLs only through the allow-list (`server.urls`), each
image within the sample limits, and all the images of one request within
`max_request_pixels` (`model.sample.pixel_budget`, opened per request by the
server's guard and per upload in the ingestion worker). The object is plain
data, so the ingestion workers (`server.workers`) apply the same rules in
their own processes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from model.sample import SampleError, SampleLimits

from .urls import UrlPolicy, UrlRefused


@dataclass
class InputPolicy:
    limits: SampleLimits
    allow_paths: list[Path] = field(default_factory=list)
    urls: UrlPolicy = field(default_factory=lambda: UrlPolicy([]))
    max_request_pixels: int = 0  # 0: no budget across a request's images

    @classmethod
    def from_settings(cls, settings) -> InputPolicy:
        limits = SampleLimits(
            max_slices=settings.max_slices, max_text_chars=settings.max_text_chars,
            max_image_pixels=settings.max_image_pixels, max_image_bytes=settings.max_image_bytes,
            max_image_aspect=settings.max_image_aspect,
            image_formats=tuple(f.upper() for f in settings.image_formats),
        )
        return cls(limits, list(settings.allow_paths), UrlPolicy(settings.allow_urls, settings.allow_private_urls),
                   settings.max_request_pixels)

    def read_path(self, value: str, where: str) -> bytes:
        """An image path a request names: inside an allow-listed folder, a regular file, within
        the byte limit; SampleError otherwise (never saying more than the rule that refused it)."""
        if not self.allow_paths:
            raise SampleError(where, "local paths are not allowed (the operator has not allow-listed any)")
        real = Path(os.path.realpath(value))
        for root in self.allow_paths:
            base = Path(os.path.realpath(root))
            if real == base or base in real.parents:
                break
        else:
            raise SampleError(where, "path is outside the allow-listed directories")
        try:
            st = real.stat()
            if not stat.S_ISREG(st.st_mode):  # a device or a pipe never ends (/dev/zero)
                raise SampleError(where, "not a regular file")
            size = st.st_size
            if size > self.limits.max_image_bytes:
                raise SampleError(where, f"{size} bytes exceed the limit of {self.limits.max_image_bytes}")
            return real.read_bytes()
        except OSError as e:
            raise SampleError(where, f"cannot read ({e.strerror})") from None

    def fetch_url(self, value: str, where: str) -> bytes:
        """An allow-listed image URL (server/urls.py); upstream details stay out of errors."""
        import httpx

        try:
            url = self.urls.check(value)
        except UrlRefused as e:
            raise SampleError(where, str(e)) from None
        failed = SampleError(where, "could not fetch an image from the URL (no redirects are followed)")
        try:
            with httpx.stream("GET", url, timeout=10.0, follow_redirects=False) as r:
                if r.status_code != 200:
                    raise failed
                data = b""
                for chunk in r.iter_bytes():
                    data += chunk
                    if len(data) > self.limits.max_image_bytes:
                        raise SampleError(where, f"image exceeds {self.limits.max_image_bytes} bytes")
                return data
        except (httpx.HTTPError, httpx.InvalidURL):
            raise failed from None

    def fetch_linked(self, src: str) -> bytes:
        """A remote image linked from a Markdown/HTML document (readers' `ReadOptions.resolve`)."""
        from index.ingest.readers import ReadError

        try:
            return self.fetch_url(src, "image")
        except SampleError as e:
            raise ReadError(e.message) from None
