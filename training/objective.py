"""The Sugar objective (docs/METHOD.md §3–§5): every named loss and their total.

    L = L_g + λ (L_nce + β L_struct) + ρ L_image

`SugarObjective` owns what the losses need beyond the model's outputs: the temperature
(learned or fixed), the gathers of the global batch under data parallelism (rank and
world size), the duplicate mask (a column whose content equals the positive's is a
positive too), the teachers' similarity (the triple kernel) and the weights. `TrainModule`
is the forward pass it is computed on: LM logits of the generative batches and the slice
embeddings of the embedding batches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from model.kernels import KernelSettings
from model.sample import Sample
from model.sugar import SliceEmbeddings, SugarModel, concat_embeddings
from model.teachers import TripleKernel

from .collate import EncodedStep
from .config import TrainConfig
from .data import Batch, PairExample
from .losses import ContrastiveLoss, GenerativeLoss, StructureLoss, image_token_loss
from .profile import PhaseTimer


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sample_key(s: Sample) -> str:
    return "|".join(sl.content_hash() for sl in s.slices)


def rows(e: SliceEmbeddings, a: int, b: int) -> SliceEmbeddings:
    return SliceEmbeddings(e.slices[a:b], e.mask[a:b], e.is_image[a:b], e.summary[a:b])


def take(e: SliceEmbeddings, idx: torch.Tensor) -> SliceEmbeddings:
    return SliceEmbeddings(e.slices[idx], e.mask[idx], e.is_image[idx], e.summary[idx])


def gather_embeddings(e: SliceEmbeddings, group=None) -> SliceEmbeddings:
    """All ranks' embeddings, gradients kept (every rank sees the global batch)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return e
    from torch.distributed.nn.functional import all_gather

    group = group or dist.group.WORLD
    m = torch.tensor([e.slices.shape[1]])
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    width = int(m)

    def pad(t: torch.Tensor) -> torch.Tensor:
        extra = width - t.shape[1]
        return t if extra == 0 else torch.cat([t, t.new_zeros(t.shape[0], extra, *t.shape[2:])], 1)

    def plain(t: torch.Tensor) -> torch.Tensor:  # bool masks travel as uint8 (gloo)
        u = t.to(torch.uint8).contiguous()
        out = [torch.zeros_like(u) for _ in range(dist.get_world_size())]
        dist.all_gather(out, u, group=group)
        return torch.cat(out).to(t.dtype)

    return SliceEmbeddings(
        slices=torch.cat(all_gather(pad(e.slices), group=group)),
        mask=plain(pad(e.mask)),
        is_image=plain(pad(e.is_image)),
        summary=torch.cat(all_gather(e.summary, group=group)),
    )


class TrainModule(nn.Module):
    """One forward for the LM pass and the embedding passes (not wrapped in DDP: the
    trainer averages gradients itself, see `Trainer.sync_gradients`)."""

    def __init__(self, model: SugarModel, cfg: TrainConfig, timer: PhaseTimer | None = None) -> None:
        super().__init__()
        self.model = model
        self.timer = timer or PhaseTimer()
        self._image_tokens: list[torch.Tensor] = []
        self._projector = None
        if cfg.image_reg > 0:  # on the projector's output, whatever the family
            self._projector = model.backbone.projector()
            self._projector.register_forward_hook(self._keep_image_tokens)

    def _keep_image_tokens(self, _module, _inputs, output) -> None:
        if self.training:
            self._image_tokens.append(output.reshape(-1, output.shape[-1]))

    def image_reg(self) -> torch.Tensor | None:
        """The regulariser over the image tokens of this forward (None: none, or off)."""
        tokens, self._image_tokens = self._image_tokens, []
        if self._projector is None or not tokens:
            return None
        return image_token_loss(torch.cat(tokens), self.model.backbone.text_embedding_rms())

    def forward(self, enc: EncodedStep) -> tuple[list[torch.Tensor], SliceEmbeddings | None, torch.Tensor | None]:
        """Logits of each generative batch, the slice embeddings of all embedding batches in
        example order (queries, positives, negatives), the image-token regulariser."""
        self._image_tokens = []
        device = self.model.backbone.device
        with self.timer("gen_forward"):
            logits = [self.model.vlm(**g.to(device).model_inputs()).logits for g in enc.gen]
        embs = None
        with self.timer("embed_forward"):
            if enc.embed:
                embs = take(self.model.embed_batches(enc.embed), torch.tensor(enc.order).argsort())
        return logits, embs, self.image_reg()


class SugarObjective(nn.Module):
    def __init__(self, cfg: TrainConfig, kernel: KernelSettings, triple: TripleKernel | None = None,
                 group=None) -> None:
        super().__init__()
        self.cfg, self.kernel, self.triple, self.group = cfg, kernel, triple, group
        self.rank, self.world_size = world()
        self.nce = ContrastiveLoss(cfg.temperature, cfg.learn_temperature)  # owns the temperature
        self.gen_loss = GenerativeLoss()
        self.struct_loss = StructureLoss(cfg.teacher_temperature)

    @property
    def temperature(self) -> float:
        return float(1.0 / self.nce.scale.detach())

    # -------------------------------------------------------------- weights
    def lam(self, step: int | None) -> float:
        """λ at `step`: a linear warm-up over `lam_warmup` steps (the LM first learns to
        read the image tokens before the pair losses compete for them), then `lam`."""
        c = self.cfg
        if step is None or c.lam_warmup <= 0:
            return c.lam
        return c.lam * min(1.0, step / c.lam_warmup)

    def total(self, losses: dict[str, torch.Tensor], gen_scale: float = 1.0,
              step: int | None = None) -> torch.Tensor:
        """L = L_g + λ (L_nce + β L_struct) + ρ L_image.

        Under data parallelism each rank holds a partial sum of the global L_g and
        the whole (gathered) L_d: `gen_scale` = world size makes the averaged gradient
        equal the single-process gradient of L.
        """
        c = self.cfg
        zero = torch.zeros(())
        disc = losses.get("nce_loss", zero) + c.beta * losses.get("struct_loss", zero)
        return (losses.get("gen_loss", zero) * gen_scale + self.lam(step) * disc
                + c.image_reg * losses.get("image_reg_loss", zero))

    def logged(self, losses: dict[str, torch.Tensor], step: int | None = None) -> dict[str, float]:
        """The losses as logged (the global batch's: the generative loss summed over ranks,
        each holding a partial sum) and their total as "loss"."""
        rec: dict[str, float] = {}
        for name, v in losses.items():
            v = v.detach().float().clone()
            if self.world_size > 1 and name == "gen_loss":
                dist.all_reduce(v, group=self.group)
            rec[name] = float(v)
        rec["loss"] = float(self.total({k: torch.tensor(v) for k, v in rec.items()}, step=step))
        return rec

    # -------------------------------------------------------------- losses
    def forward(self, batch: Batch, logits: list[torch.Tensor], labels: list[torch.Tensor],
                embs: SliceEmbeddings | None, image_reg: torch.Tensor | None,
                step: int | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every named loss of this rank's share, and the total to differentiate."""
        out: dict[str, torch.Tensor] = {}
        if logits:
            out["gen_loss"] = self.generative(logits, labels)
        if embs is not None:
            out.update(self.discriminative(batch, embs))
        if image_reg is not None:
            out["image_reg_loss"] = image_reg
        return out, self.total(out, gen_scale=self.world_size, step=step)

    def generative(self, logits: list[torch.Tensor], labels: list[torch.Tensor]) -> torch.Tensor:
        """The sum over response tokens divided by their global count (so ranks' parts add up)."""
        n_tok = sum((lab[:, 1:] != -100).sum() for lab in labels).float()  # type: ignore[union-attr]
        if self.world_size > 1:
            dist.all_reduce(n_tok, group=self.group)
        norm = float(n_tok.clamp_min(1))
        return sum(self.gen_loss(lg, lab.to(lg.device), normalizer=norm)["gen_loss"]  # type: ignore[return-value]
                   for lg, lab in zip(logits, labels, strict=True))

    def similarity(self, q: SliceEmbeddings, d: SliceEmbeddings) -> torch.Tensor:
        """[Bq, Bd]: s̄ over slice sequences, or g(q)·g(d) when the GA kernel is ablated."""
        if not self.cfg.use_ga:
            return q.summary @ d.summary.T
        return self.kernel.similarity(q.slices, d.slices, q.mask, d.mask, impl="linear")

    def discriminative(self, batch: Batch, e: SliceEmbeddings) -> dict[str, torch.Tensor]:
        B = len(batch.pairs)
        n_neg = sum(len(p.negatives) for p in batch.pairs)
        q, d = gather_embeddings(rows(e, 0, B), self.group), gather_embeddings(rows(e, B, 2 * B), self.group)
        neg = self.gather_negatives(rows(e, 2 * B, 2 * B + n_neg) if n_neg else None, n_neg, rows(e, B, 2 * B))
        docs = d if neg is None else concat_embeddings([d, neg])
        sim = self.similarity(q, docs)
        pairs = self.global_pairs(batch)
        doc_samples = [p.positive for p in pairs] + ([n for p in pairs for n in p.negatives] if neg is not None else [])
        same = self.duplicates(pairs, doc_samples)
        scale = self.nce.scale
        out = self.nce(sim, same, scale)
        if self.triple is not None and self.cfg.beta > 0:
            n = len(pairs)
            t_qd = self.triple.similarity([p.query for p in pairs], doc_samples)
            mask_qd = ~same
            mask_qd[:, :n] |= torch.eye(n, dtype=torch.bool)
            t_dd = self.triple.similarity([p.positive for p in pairs], [p.positive for p in pairs])
            struct_qd = self.struct_loss(sim * scale, t_qd, mask_qd)["struct_loss"]
            eye = torch.eye(n, dtype=torch.bool)
            struct_dd = self.struct_loss(self.similarity(d, d) * scale, t_dd, ~eye)["struct_loss"]
            out["struct_loss"] = 0.5 * (struct_qd + struct_dd)
        return out

    @staticmethod
    def duplicates(pairs: list[PairExample], doc_samples: list[Sample]) -> torch.Tensor:
        """[B, N] positives: each query's own document, any document with the same content,
        and the document of a query whose content equals this one's (duplicate captions)."""
        keys = [sample_key(s) for s in doc_samples]
        pos_keys = keys[: len(pairs)]
        q_keys = [sample_key(p.query) for p in pairs]
        same = torch.tensor([[kd == pk for kd in keys] for pk in pos_keys])
        for i, qi in enumerate(q_keys):
            for j, qj in enumerate(q_keys):
                if i != j and qi == qj:
                    same[i, j] = True
        return same

    # -------------------------------------------------------------- gathers
    def gather_negatives(self, local: SliceEmbeddings | None, n_local: int,
                         filler: SliceEmbeddings) -> SliceEmbeddings | None:
        """Hard negatives of every rank, in global pair order.

        Ranks may hold different numbers: each pads to the largest count with
        copies of a row it has, all_gather moves equal shapes, and the padding
        rows are dropped again (their gradient is zero).
        """
        if self.world_size == 1:
            return local if n_local else None
        n = torch.tensor([n_local])
        dist.all_reduce(n, op=dist.ReduceOp.MAX, group=self.group)
        n_max = int(n)
        if n_max == 0:
            return None
        src = local if n_local else filler
        parts = ([local] if n_local else []) + [rows(src, 0, 1) for _ in range(n_max - n_local)]  # type: ignore[list-item]
        flags = torch.tensor([1] * n_local + [0] * (n_max - n_local), dtype=torch.uint8)
        gathered = gather_embeddings(concat_embeddings(parts), self.group)
        all_flags = [torch.zeros_like(flags) for _ in range(self.world_size)]
        dist.all_gather(all_flags, flags, group=self.group)
        return take(gathered, torch.cat(all_flags).nonzero()[:, 0])

    def global_pairs(self, batch: Batch) -> list[PairExample]:
        if self.world_size == 1:
            return batch.pairs
        objs: list[Any] = [None] * self.world_size
        dist.all_gather_object(objs, [(p.query, p.positive, p.negatives, p.kind) for p in batch.pairs],
                               group=self.group)
        return [PairExample(q, d, k, n) for part in objs for (q, d, n, k) in part]

