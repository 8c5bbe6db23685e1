"""The training loop: accelerate (CPU by default, DDP under torchrun/accelerate launch).

Split into small pieces: `build_model` (tiny or HF backbone + LoRA),
`build_teachers` (cached, checked on minimal pairs, weight 0 when blind),
`Trainer.batch` (deterministic per (seed, step, rank): resuming replays the
same batches), `Trainer.step` (forward, named losses, backward, optimiser),
`Trainer.save_state` / `load_state` (exact resume), `Trainer.finish`
(checkpoint, metrics JSONL, loss-curve PNG).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from model.backbone import EncodedBatch, load_backbone
from model.heads import GlobalBatchNorm
from model.sample import Sample
from model.sugar import SliceEmbeddings, SugarModel
from model.teachers import CachedTeacher, TripleKernel, load_teacher

from .collate import encode_embed_buckets, encode_gen_buckets
from .config import TrainConfig
from .data import GenExample, JsonlPools, MinimalPair, PairExample, Pools, SyntheticPools
from .losses import (
    ContrastiveLoss,
    GenerativeLoss,
    StructureLoss,
    image_token_loss,
    student_similarity,
)
from .profile import PhaseTimer
from .vision import standardize_projector, train_vision, vision_parameters

logger = logging.getLogger(__name__)

STATE_DIR = "state"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "loss_curves.png"


def warmup_cosine(step: int, steps: int, warmup: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warm-up, then cosine decay to `min_lr_ratio` at `steps`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ------------------------------------------------------------------ model


def build_model(cfg: TrainConfig, corpus: list[str]) -> SugarModel:
    sugar_cfg = cfg.sugar
    if cfg.backbone == "tiny":
        from model.tiny import build_tiny

        tiny = dataclasses.replace(cfg.tiny, seed=cfg.seed)
        backbone = build_tiny(tiny, corpus=corpus, fmt=sugar_cfg.prompts)
    else:
        backbone = load_backbone(cfg.backbone)
    torch.manual_seed(cfg.seed)
    model = SugarModel(backbone, sugar_cfg)
    if cfg.lora_rank > 0:
        apply_lora(model, cfg)
    return model


def apply_lora(model: SugarModel, cfg: TrainConfig) -> None:
    """LoRA adapters on the language model; vision tower frozen; heads fully trained."""
    from peft import LoraConfig, inject_adapter_in_model

    lm = model.lm
    for p in lm.parameters():
        p.requires_grad_(False)
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                        target_modules=list(cfg.lora_targets), lora_dropout=0.0)
    inject_adapter_in_model(config, lm.model.language_model)
    for n, p in lm.named_parameters():
        if "lora_" in n:
            p.requires_grad_(True)


def merge_lora(model: SugarModel) -> None:
    """Fold LoRA weights into the base layers so backbone/ is a plain HF model."""
    from peft.tuners.lora import LoraLayer

    lm = model.lm.model.language_model
    for name, module in list(lm.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = lm.get_submodule(parent_name) if parent_name else lm
            setattr(parent, child, module.get_base_layer())


# ------------------------------------------------------------------ teachers


def build_teachers(cfg: TrainConfig, cache_dir: Path) -> TripleKernel | None:
    if cfg.beta <= 0 or not cfg.use_disc:
        logger.info("structure loss off (β=%s, ablation %s): no teachers loaded", cfg.beta, cfg.ablation)
        return None
    teachers: dict[str, Any] = {}
    for role in ("text", "image", "cross"):
        t = load_teacher(role, cfg.teachers.get(role))
        teachers[role] = CachedTeacher(t, cache_dir) if t is not None else None
    if not any(teachers.values()):
        logger.info("no teachers configured: structure loss off")
        return None
    return TripleKernel(teachers["text"], teachers["image"], teachers["cross"],
                        weights=cfg.teacher_weights, sigma=cfg.teacher_sigma)


def teacher_minimal_pair_accuracy(triple: TripleKernel, cases: list[MinimalPair]) -> dict:
    """Per teacher and attribute: does the teacher put a re-rendered (image) or
    paraphrased (text) anchor closer to its scene than to the minimal-pair twin?"""
    report: dict[str, dict[str, float]] = {}
    for role in triple.active:
        teacher = triple.teachers[role]
        assert teacher is not None
        hits: dict[str, list[int]] = {}
        for case in cases:
            a, p, q = case.image if teacher.supports("image") and role != "text" else case.text
            f = teacher.encode_slices([a, p, q])
            hits.setdefault(case.attribute, []).append(int(float(f[0] @ f[1]) > float(f[0] @ f[2])))
        per_attr = {attr: sum(v) / len(v) for attr, v in hits.items()}
        per_attr["overall"] = sum(per_attr.values()) / max(1, len(per_attr))
        report[role] = per_attr
    return report


# ------------------------------------------------------------------ batches


@dataclass
class Batch:
    gen: list[GenExample]
    pairs: list[PairExample]


def sample_key(s: Sample) -> str:
    return "|".join(sl.content_hash() for sl in s.slices)


class TrainModule(nn.Module):
    """What DDP wraps: one forward for the LM pass and the embedding passes."""

    def __init__(self, model: SugarModel, cfg: TrainConfig, timer: PhaseTimer | None = None) -> None:
        super().__init__()
        self.model = model
        self.timer = timer or PhaseTimer()
        self.nce = ContrastiveLoss(cfg.temperature, cfg.learn_temperature)
        self._image_tokens: list[torch.Tensor] = []
        self._projector = None
        if cfg.image_reg > 0:
            inner = getattr(getattr(model.backbone, "model", None), "model", None)
            self._projector = getattr(inner, "multi_modal_projector", None)
            if self._projector is None:
                raise ValueError("image_reg > 0 needs a LLaVA backbone (a multi_modal_projector)")
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

    def forward(self, gen: list[EncodedBatch], embed: list[EncodedBatch]):
        """Logits of each generative batch, the slice embeddings of all embedding batches
        (rows in batch order), the temperature's scale, the image-token regulariser."""
        self._image_tokens = []
        device = self.model.backbone.device
        with self.timer("gen_forward"):
            logits = [self.model.lm(**g.to(device).model_inputs()).logits for g in gen]
        with self.timer("embed_forward"):
            embs = [self.model.embed_batches(embed)] if embed else []
        # the temperature leaves forward too: DDP must see every parameter used here
        return logits, embs, self.nce.scale, self.image_reg()


def gather_embeddings(e: SliceEmbeddings, group=None) -> SliceEmbeddings:
    """All ranks' embeddings, gradients kept (every rank sees the global batch)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return e
    from torch.distributed.nn.functional import all_gather

    group = group or dist.group.WORLD
    m = torch.tensor([e.slices.shape[1]])
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    m = int(m)

    def pad(t: torch.Tensor) -> torch.Tensor:
        extra = m - t.shape[1]
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


def _rows(e: SliceEmbeddings, a: int, b: int) -> SliceEmbeddings:
    return SliceEmbeddings(e.slices[a:b], e.mask[a:b], e.is_image[a:b], e.summary[a:b])


def _take(e: SliceEmbeddings, idx: torch.Tensor) -> SliceEmbeddings:
    return SliceEmbeddings(e.slices[idx], e.mask[idx], e.is_image[idx], e.summary[idx])


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ------------------------------------------------------------------ trainer


class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | Path, cache_dir: str | Path | None = None) -> None:
        from accelerate import Accelerator

        self.cfg = cfg.ablated()
        self.out = Path(out_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else self.out / "teacher-cache"
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.accel = Accelerator(
            cpu=not torch.cuda.is_available(),
            gradient_accumulation_steps=self.cfg.grad_accum,
            mixed_precision="bf16" if self.cfg.bf16 else "no",
        )
        self.rank, self.world_size = world()
        # embedding collectives run on a group of their own (see GlobalBatchNorm)
        self.group = dist.new_group(backend="gloo") if self.world_size > 1 else None
        self.t0 = time.time()
        self.metrics: list[dict] = []
        self._setup()

    def close(self) -> None:
        """Tear the process groups down under torchrun: exiting with gloo groups
        alive can abort a rank ("terminate called without an active exception")."""
        if self.world_size > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    # -------------------------------------------------------------- setup
    def _setup(self) -> None:
        c = self.cfg
        self.pools: Pools = JsonlPools(c.data) if c.data else SyntheticPools(
            "train", c.seed, c.n_scenes, c.n_pages, c.n_houses, c.n_fashion, c.image_size)
        self.model = build_model(c, self.pools.tokenizer_corpus())
        for mod in self.model.modules():  # heads and the tiny projector's batch norms
            if isinstance(mod, GlobalBatchNorm):
                mod.process_group = self.group
        self.triple = build_teachers(c, self.cache_dir)
        self.teacher_report: dict = {}
        cases = self.pools.minimal_pairs(60) if self.triple is not None else []
        if self.triple is not None and cases:
            self.teacher_report = teacher_minimal_pair_accuracy(self.triple, cases)
            for role, acc in self.teacher_report.items():
                logger.info("teacher %s minimal-pair accuracy: %s", role,
                            {k: round(v, 3) for k, v in acc.items()})
                if acc["overall"] < c.teacher_min_accuracy:
                    self.triple.set_weight(role, 0.0, f"(minimal-pair accuracy {acc['overall']:.2f} "
                                                      f"< {c.teacher_min_accuracy})")
            if not self.triple.active:
                self.triple = None
        self.gen_loss = GenerativeLoss()
        self.struct_loss = StructureLoss(c.teacher_temperature)
        self.timer = PhaseTimer()
        self.module = TrainModule(self.model, c, self.timer)
        self.model.train()
        vision = {id(p) for p in vision_parameters(self.model.lm)}
        params = [p for p in self.module.parameters() if p.requires_grad]
        self.vision_params = [p for p in params if id(p) in vision]
        groups = [{"params": [p for p in params if id(p) not in vision]}, {"params": self.vision_params}]
        self.optimizer = torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [self._lr_lambda, self._vision_lr_lambda])
        self.vision_report: dict = {}
        # the module is not wrapped in DDP: its forward and backward run collectives
        # of their own (embedding gather, global batch statistics) whose order DDP's
        # overlapped bucket all-reduce would interleave differently on each rank.
        # Gradients are averaged with one all-reduce per optimiser step instead
        # (`sync_gradients`): the same arithmetic as DDP, done after backward.
        # (the scheduler stays unwrapped: accelerate would step it once per process)
        self.module.to(self.accel.device)
        self.optimizer = self.accel.prepare(self.optimizer)
        self.accel.register_for_checkpointing(self.scheduler, self.module)
        self.start_step = 0
        self.dropped: dict[str, int] = {}

    def _lr_lambda(self, step: int) -> float:
        c = self.cfg
        return warmup_cosine(step, c.steps, c.warmup, c.min_lr_ratio)

    def _vision_lr_lambda(self, step: int) -> float:
        """The vision side: frozen through stage 1, then `vision_lr_scale` x the schedule."""
        return 0.0 if self.reading(step) else self.cfg.vision_lr_scale * self._lr_lambda(step)

    def reading(self, step: int) -> bool:
        """Stage 1 of the staged recipe: the generative loss alone, the vision side frozen."""
        return step < self.cfg.read_steps

    def vision_stage(self) -> None:
        """Stage 0 (training/vision.py): the vision side learns its captions' words, then
        (optionally) the projector's output is standardised to the text scale."""
        c = self.cfg
        if c.vision_steps <= 0 and c.standardize_projector == "none":
            return
        t0 = time.time()
        if c.vision_steps > 0:
            rng = random.Random(f"{c.seed}:vision")
            rows = train_vision(self.model.backbone, lambda _s: self.pools.caption_pairs(rng, c.vision_batch),
                                c.vision_steps, lr=c.vision_lr, batch=c.vision_batch)
            self.vision_report["rows"] = rows
        if c.standardize_projector != "none":
            rng = random.Random(f"{c.seed}:standardize")
            self.vision_report.update(standardize_projector(
                self.model.backbone, [im for im, _ in self.pools.caption_pairs(rng, 256)],
                per_feature=c.standardize_projector == "feature", scale=c.image_scale))
        self.vision_report["seconds"] = round(time.time() - t0, 1)
        logger.info("vision stage: %s", {k: v for k, v in self.vision_report.items() if k != "rows"})

    def stage_marks(self) -> dict[str, int]:
        """Where the staged recipe's phases begin (for the loss curves)."""
        c = self.cfg
        marks = {}
        if 0 < c.align_steps < c.steps:
            marks["captions end"] = c.align_steps
        if 0 < c.read_steps < c.steps:
            marks["joint phase"] = c.read_steps
        return marks

    def set_stage(self, step: int) -> None:
        """Vision parameters need no gradient while frozen (stage 1, or a scale of 0)."""
        frozen = self.reading(step) or self.cfg.vision_lr_scale == 0
        for p in self.vision_params:
            p.requires_grad_(not frozen)

    def precompute_teachers(self) -> None:
        """Teacher features for every distinct slice of the pools, once (cached on disk)."""
        slices = self.pools.teacher_slices() if self.triple is not None else []
        if not slices:
            return
        chunk = 256
        for a in tqdm(range(0, len(slices), chunk), desc="teacher features", unit="chunk",
                      disable=self.rank != 0):
            for role in self.triple.active:
                self.triple.teachers[role].encode_slices(slices[a : a + chunk])  # type: ignore[union-attr]
        if self.rank == 0:
            self.triple.flush()

    # -------------------------------------------------------------- batches
    def batch(self, step: int) -> Batch:
        """This rank's share of the global batch of `step` (deterministic, contiguous shards)."""
        c = self.cfg
        rng = random.Random(f"{c.seed}:{step}")
        kinds = c.align_kinds if step < c.align_steps else c.gen_kinds
        p = self.pools
        gen = [p.gen_example(rng, kinds) for _ in range(c.gen_batch)] if c.use_gen and p.can_generate else []
        pairs = ([p.pair_example(rng, c.pair_kinds, c.hard_negatives) for _ in range(c.pair_batch)]
                 if c.use_disc and p.can_pair and not self.reading(step) else [])
        if c.use_gen and not p.can_generate:
            self._drop("generative examples: the data has none", c.gen_batch)
        if c.use_disc and not p.can_pair:
            self._drop("pair examples: the data has none", c.pair_batch)
        self._drop("generative examples beyond a multiple of the world size", len(gen) % self.world_size)
        self._drop("pair examples beyond a multiple of the world size", len(pairs) % self.world_size)

        def shard(xs: list) -> list:
            n = len(xs) // self.world_size
            return xs[self.rank * n : (self.rank + 1) * n]

        return Batch(shard(gen), shard(pairs))

    def _drop(self, what: str, n: int) -> None:
        """Count examples a batch loses (reported in training.json; logged the first time)."""
        if n <= 0:
            return
        if what not in self.dropped:
            logger.warning("training data: %s — %d dropped at this step (counted in training.json)", what, n)
        self.dropped[what] = self.dropped.get(what, 0) + n

    def data_report(self) -> dict:
        subs = dict(getattr(self.pools, "substitutions", {}))
        report = {"substituted": subs, "dropped": dict(self.dropped)}
        skipped = getattr(self.pools, "skipped_documents", 0)
        if skipped:
            report["documents_not_used"] = skipped
        return report

    # -------------------------------------------------------------- one step
    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        model = self.model
        negs = [n for p in batch.pairs for n in p.negatives]
        embed: list[EncodedBatch] = []
        order: list[int] = []
        with self.timer("encode"):
            gen = encode_gen_buckets(model, batch.gen) if batch.gen else []
            if batch.pairs:
                # queries, positives and hard negatives, each group padded in length buckets
                # (training/collate.py); one pass of the heads over all of them, so the batch
                # statistics before the heads cover every slice of the step (queries and
                # documents normalised alike), and every rank runs the same collectives
                q_batches, q_order = encode_embed_buckets(model, [p.query for p in batch.pairs])
                d_batches, d_order = encode_embed_buckets(model, [p.positive for p in batch.pairs] + negs)
                embed = q_batches + d_batches
                order = q_order + [len(batch.pairs) + i for i in d_order]
        logits, embs, scale, image_reg = self.module([b for b, _ in gen], embed)
        if embs:  # back to the order queries, positives, negatives
            embs = [_take(embs[0], torch.tensor(order).argsort())]
        with self.timer("losses"):
            return self._named_losses(batch, logits, [lab for _, lab in gen], embs, negs, scale, image_reg)

    def _named_losses(self, batch: Batch, logits: list[torch.Tensor], labels: list[torch.Tensor], embs,
                      negs, scale, image_reg) -> dict:
        if embs:
            B = len(batch.pairs)
            e = embs[0]
            embs = [_rows(e, 0, B), _rows(e, B, 2 * B)] + ([_rows(e, 2 * B, 2 * B + len(negs))] if negs else [])
        out: dict[str, torch.Tensor] = {}
        if logits:
            n_tok = sum((lab[:, 1:] != -100).sum() for lab in labels).float()
            if self.world_size > 1:
                dist.all_reduce(n_tok, group=self.group)
            norm = float(n_tok.clamp_min(1))
            out["gen_loss"] = sum(self.gen_loss(lg, lab.to(lg.device), normalizer=norm)["gen_loss"]
                                  for lg, lab in zip(logits, labels, strict=True))
        if embs:
            out.update(self._disc_losses(batch, embs, negs, scale))
        if image_reg is not None:
            out["image_reg_loss"] = image_reg
        return out

    def _disc_losses(self, batch: Batch, embs: list[SliceEmbeddings], negs: list[Sample],
                     scale: torch.Tensor) -> dict:
        c = self.cfg
        sugar = self.model.config
        q, d = gather_embeddings(embs[0], self.group), gather_embeddings(embs[1], self.group)
        docs = d
        neg = self._gather_negatives(embs[2] if len(embs) > 2 else None, len(negs), embs[1])
        if neg is not None:
            from model.sugar import concat_embeddings

            docs = concat_embeddings([d, neg])
        sim = student_similarity(q, docs, c.use_ga, sugar.kernel_sigma, sugar.kernel_gamma,
                                 sugar.length_normalization)
        pairs_all = self._global_pairs(batch)
        doc_samples = [p.positive for p in pairs_all] + (
            [n for p in pairs_all for n in p.negatives] if docs is not d else [])
        keys = [sample_key(s) for s in doc_samples]
        pos_keys = keys[: len(pairs_all)]
        q_keys = [sample_key(p.query) for p in pairs_all]
        same = torch.tensor([[kd == pk for kd in keys] for pk in pos_keys])
        # a column whose query twin is identical is a positive too (duplicate captions)
        for i, qi in enumerate(q_keys):
            for j, qj in enumerate(q_keys):
                if i != j and qi == qj:
                    same[i, j] = True
        out = self.module.nce(sim, same, scale)
        if self.triple is not None and c.beta > 0:
            t_qd = self.triple.similarity([p.query for p in pairs_all], doc_samples)
            mask_qd = ~same
            mask_qd[:, : len(pairs_all)] |= torch.eye(len(pairs_all), dtype=torch.bool)
            s_dd = student_similarity(d, d, c.use_ga, sugar.kernel_sigma, sugar.kernel_gamma,
                                      sugar.length_normalization)
            t_dd = self.triple.similarity([p.positive for p in pairs_all], [p.positive for p in pairs_all])
            eye = torch.eye(len(pairs_all), dtype=torch.bool)
            struct_qd = self.struct_loss(sim * scale, t_qd, mask_qd)["struct_loss"]
            struct_dd = self.struct_loss(s_dd * scale, t_dd, ~eye)["struct_loss"]
            out["struct_loss"] = 0.5 * (struct_qd + struct_dd)
        return out

    def _gather_negatives(self, local: SliceEmbeddings | None, n_local: int,
                          filler: SliceEmbeddings) -> SliceEmbeddings | None:
        """Hard negatives of every rank, in global pair order.

        Ranks may hold different numbers: each pads to the largest count with
        copies of a row it has, all_gather moves equal shapes, and the padding
        rows are dropped again (their gradient is zero).
        """
        if self.world_size == 1:
            return local if n_local else None
        from model.sugar import concat_embeddings

        n = torch.tensor([n_local])
        dist.all_reduce(n, op=dist.ReduceOp.MAX, group=self.group)
        n_max = int(n)
        if n_max == 0:
            return None
        parts = [local] if n_local else []
        src = local if n_local else filler
        for _ in range(n_max - n_local):
            parts.append(_rows(src, 0, 1))
        padded = concat_embeddings(parts)
        flags = torch.tensor([1] * n_local + [0] * (n_max - n_local), dtype=torch.uint8)
        gathered = gather_embeddings(padded, self.group)
        all_flags = [torch.zeros_like(flags) for _ in range(self.world_size)]
        dist.all_gather(all_flags, flags, group=self.group)
        keep = torch.cat(all_flags).nonzero()[:, 0]
        return SliceEmbeddings(gathered.slices[keep], gathered.mask[keep], gathered.is_image[keep],
                               gathered.summary[keep])

    def _global_pairs(self, batch: Batch) -> list[PairExample]:
        if self.world_size == 1:
            return batch.pairs
        objs: list[Any] = [None] * self.world_size
        dist.all_gather_object(objs, [(p.query, p.positive, p.negatives, p.kind) for p in batch.pairs],
                               group=self.group)
        return [PairExample(q, d, k, n) for part in objs for (q, d, n, k) in part]

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
        the whole (gathered) L_d: `gen_scale` = world size makes DDP's gradient
        average equal the single-process gradient of L.
        """
        c = self.cfg
        total = losses.get("gen_loss", torch.zeros(())) * gen_scale
        disc = losses.get("nce_loss", torch.zeros(())) + c.beta * losses.get("struct_loss", torch.zeros(()))
        return total + self.lam(step) * disc + c.image_reg * losses.get("image_reg_loss", torch.zeros(()))

    def step(self, step: int) -> dict[str, float]:
        self.set_stage(step)
        with self.timer("data"):
            batch = self.batch(step)
        with self.accel.accumulate(self.module):
            losses = self.losses(batch)
            with self.timer("backward"):
                self.accel.backward(self.total(losses, gen_scale=self.world_size, step=step))
            with self.timer("optimizer"):
                if self.accel.sync_gradients:
                    self.sync_gradients()
                if self.accel.sync_gradients and self.cfg.grad_clip:
                    self.accel.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
        rec = {k: self._global_value(k, v) for k, v in losses.items()}
        rec["loss"] = float(self.total({k: torch.tensor(v) for k, v in rec.items()}, step=step))
        rec["lr"] = self.scheduler.get_last_lr()[0]
        rec["temperature"] = float(1.0 / self.module.nce.scale.detach())
        rec["step"] = step
        rec["elapsed_s"] = round(time.time() - self.t0, 2)
        return rec

    def sync_gradients(self) -> None:
        """Average gradients over ranks: one flat all-reduce (DDP's arithmetic)."""
        if self.world_size == 1:
            return
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        params = [p for p in self.module.parameters() if p.requires_grad]
        # a parameter no rank touched keeps grad None (the optimiser skips it, as
        # it would in one process); one touched anywhere is averaged everywhere
        used = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8)
        dist.all_reduce(used, op=dist.ReduceOp.MAX)
        params = [p for p, u in zip(params, used.tolist(), strict=True) if u]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world_size
        for p, g in zip(params, _unflatten_dense_tensors(flat, grads), strict=True):
            p.grad = g

    def _global_value(self, name: str, v: torch.Tensor) -> float:
        v = v.detach().float().clone()
        if self.world_size > 1 and name == "gen_loss":
            dist.all_reduce(v, group=self.group)  # partial sums of the global mean
        return float(v)

    # -------------------------------------------------------------- state
    def save_state(self, step: int) -> None:
        state = self.out / STATE_DIR
        self.accel.save_state(str(state))
        if self.rank == 0:
            (state / "trainer.json").write_text(json.dumps({"step": step, "vision_stage": self.vision_report}))
            with open(self.out / METRICS_FILE, "w") as f:
                for rec in self.metrics:
                    f.write(json.dumps(rec) + "\n")

    def load_state(self) -> bool:
        state = self.out / STATE_DIR
        if not (state / "trainer.json").is_file():
            return False
        self.accel.load_state(str(state))
        saved = json.loads((state / "trainer.json").read_text())
        self.start_step = saved["step"] + 1
        self.vision_report = saved.get("vision_stage", {})
        if (self.out / METRICS_FILE).is_file():
            self.metrics = [json.loads(line) for line in (self.out / METRICS_FILE).read_text().splitlines()
                            if line.strip()]
            self.metrics = [m for m in self.metrics if m["step"] < self.start_step]
        logger.info("resumed from %s at step %d", state, self.start_step)
        return True

    # -------------------------------------------------------------- run
    def run(self, resume: bool = False) -> Path:
        self.out.mkdir(parents=True, exist_ok=True)
        if resume:
            self.load_state()
        if self.start_step == 0:
            self.vision_stage()
        self.precompute_teachers()
        bar = tqdm(range(self.start_step, self.cfg.steps), desc=f"train[{self.cfg.ablation}]",
                   initial=self.start_step, total=self.cfg.steps, disable=self.rank != 0)
        for step in bar:
            rec = self.step(step)
            self.metrics.append(rec)
            bar.set_postfix({k: f"{v:.3f}" for k, v in rec.items() if k.endswith("_loss")})
            if self.cfg.log_every and (step + 1) % self.cfg.log_every == 0 and self.rank == 0:
                logger.info("step %d/%d %s lr %.2e", step + 1, self.cfg.steps,
                            " ".join(f"{k} {v:.4f}" for k, v in rec.items() if k.endswith("_loss")), rec["lr"])
            if (step + 1) % self.cfg.checkpoint_every == 0 and step + 1 < self.cfg.steps:
                self.save_state(step)
        return self.finish()

    def finish(self) -> Path:
        self.accel.wait_for_everyone()
        if self.rank != 0:
            return self.out
        model = self.model
        model.eval()
        if self.cfg.lora_rank > 0:
            merge_lora(model)
        with open(self.out / METRICS_FILE, "w") as f:
            for rec in self.metrics:
                f.write(json.dumps(rec) + "\n")
        plot_curves(self.metrics, self.out / CURVES_FILE, self.stage_marks())
        info = {
            "config": self.cfg.to_dict(),
            "steps": self.cfg.steps,
            "seed": self.cfg.seed,
            "data": self.cfg.data or "built-in synthetic world (+ Fashion-MNIST when present)",
            "final": self.metrics[-1] if self.metrics else {},
            "teacher_minimal_pair_accuracy": self.teacher_report,
            "teacher_weights": dict(self.triple.weights) if self.triple else {},
            "vision_stage": self.vision_report,
            # what the data could not give as configured: kinds drawn as others, examples dropped
            "data_report": self.data_report(),
            "wall_time_s": round(time.time() - self.t0, 1),
            "code_version": code_version(),
            "world_size": self.world_size,
        }
        dtype = None if self.cfg.save_dtype == "float32" else getattr(torch, self.cfg.save_dtype)
        model.save_pretrained(self.out, training=info, dtype=dtype)
        logger.info("checkpoint written to %s (%.0f s)", self.out, time.time() - self.t0)
        return self.out


def plot_curves(metrics: list[dict], path: Path, stages: dict[str, int] | None = None) -> None:
    """One panel per named loss and the total; `stages` (name -> first step) are marked."""
    if not metrics:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({k for m in metrics for k in m if k.endswith("_loss")})
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(4 * (len(names) + 1), 3.2))
    steps = [m["step"] for m in metrics]
    for ax, name in zip(axes, [*names, "loss"], strict=True):
        ax.plot(steps, [m.get(name, float("nan")) for m in metrics])
        for i, (label, at) in enumerate((stages or {}).items()):
            ax.axvline(at, color="grey", linestyle="--", linewidth=0.8)
            ax.text(at, 0.97 - 0.09 * i, f" {label}", transform=ax.get_xaxis_transform(), fontsize=7,
                    va="top")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def code_version() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False,
          cache_dir: str | Path | None = None) -> Path:
    trainer = Trainer(cfg, out_dir, cache_dir)
    try:
        return trainer.run(resume=resume)
    finally:
        trainer.close()
