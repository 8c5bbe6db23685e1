"""The training loop: accelerate (CPU by default, DDP under torchrun/accelerate launch).

The Trainer and nothing else: it assembles a run from its parts — the model and the
teachers (`build`), the batches (`data.BatchSource`), their encoding (`collate`), the
forward pass and the losses (`objective`), the staged schedule (`schedule`) — and runs
it: `Trainer.step` (one optimiser step), `save_state` / `load_state` (exact resume),
`finish` (checkpoint, metrics JSONL, loss-curve PNG: `report`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from model.heads import GlobalBatchNorm
from model.kernels import set_threads

from .build import build_model, build_teachers, merge_lora, teacher_minimal_pair_accuracy
from .collate import encode_step
from .config import TrainConfig
from .data import BatchSource, JsonlPools, Pools, SyntheticPools
from .objective import SugarObjective, TrainModule, world
from .profile import PhaseTimer
from .report import code_version, plot_curves
from .schedule import Schedule
from .vision import standardize_projector, train_vision, vision_parameters

logger = logging.getLogger(__name__)

STATE_DIR = "state"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "loss_curves.png"


class Trainer:
    def __init__(self, cfg: TrainConfig, out_dir: str | Path, cache_dir: str | Path | None = None) -> None:
        from accelerate import Accelerator

        self.cfg = cfg.ablated()
        self.out = Path(out_dir)
        self.cache_dir = Path(cache_dir) if cache_dir else self.out / "teacher-cache"
        if self.cfg.threads:
            set_threads(self.cfg.threads)
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
        if isinstance(self.pools, SyntheticPools):
            self.pools.follow(c)
        self.model = build_model(c, self.pools.tokenizer_corpus())
        if isinstance(self.pools, SyntheticPools):
            self.pools.tokenize = self.model.backbone.tokenizer.tokenize
        for mod in self.model.modules():  # heads and the tiny projector's batch norms
            if isinstance(mod, GlobalBatchNorm):
                mod.process_group = self.group
        self.teacher_report: dict = {}
        triple = self._checked_teachers()
        self.schedule = Schedule(c)
        self.batch = BatchSource(self.pools, c, self.schedule, self.rank, self.world_size)
        self.timer = PhaseTimer()
        self.module = TrainModule(self.model, c, self.timer)
        self.objective = SugarObjective(c, self.model.config.kernel, triple, self.group)
        self.model.train()
        vision = {id(p) for p in vision_parameters(self.model.backbone)}
        params = [p for m in (self.module, self.objective) for p in m.parameters() if p.requires_grad]
        self.vision_params = [p for p in params if id(p) in vision]
        groups = [{"params": [p for p in params if id(p) not in vision]}, {"params": self.vision_params}]
        self.optimizer = torch.optim.AdamW(groups, lr=c.lr, weight_decay=c.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [self.schedule.lr, self.schedule.vision_lr])
        self.vision_report: dict = {}
        # the module is not wrapped in DDP: its forward and backward run collectives
        # of their own (embedding gather, global batch statistics) whose order DDP's
        # overlapped bucket all-reduce would interleave differently on each rank.
        # Gradients are averaged with one all-reduce per optimiser step instead
        # (`sync_gradients`): the same arithmetic as DDP, done after backward.
        # (the scheduler stays unwrapped: accelerate would step it once per process)
        self.module.to(self.accel.device)
        self.objective.to(self.accel.device)
        self.optimizer = self.accel.prepare(self.optimizer)
        self.accel.register_for_checkpointing(self.scheduler, self.module, self.objective)
        self.start_step = 0

    def _checked_teachers(self):
        """The teachers, each checked on minimal pairs; one below `teacher_min_accuracy` gets
        weight 0 (None when none is left)."""
        c = self.cfg
        triple = build_teachers(c, self.cache_dir)
        cases = self.pools.minimal_pairs(60) if triple is not None else []
        if triple is None or not cases:
            return triple
        self.teacher_report = teacher_minimal_pair_accuracy(triple, cases)
        for role, acc in self.teacher_report.items():
            logger.info("teacher %s minimal-pair accuracy: %s", role, {k: round(v, 3) for k, v in acc.items()})
            if acc["overall"] < c.teacher_min_accuracy:
                triple.set_weight(role, 0.0, f"(minimal-pair accuracy {acc['overall']:.2f} "
                                             f"< {c.teacher_min_accuracy})")
        return triple if triple.active else None

    @property
    def triple(self):
        return self.objective.triple

    def stage_marks(self) -> dict[str, int]:
        return self.schedule.marks()

    def vision_stage(self) -> None:
        """Stage 0 (training/vision.py): the vision side learns its captions' words, then
        (optionally) the projector's output is standardised to the text scale."""
        c = self.cfg
        if c.init:
            logger.info("vision stage skipped: warm start from %s (its projector as saved)", c.init)
            return
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

    # -------------------------------------------------------------- one step
    def step(self, step: int) -> dict[str, float]:
        self.schedule.set_stage(step, self.vision_params)
        with self.timer("data"):
            batch = self.batch(step)
        with self.accel.accumulate(self.module):
            with self.timer("encode"):
                enc = encode_step(self.model, batch)
            logits, embs, image_reg = self.module(enc)
            with self.timer("losses"):
                losses, total = self.objective(batch, logits, enc.labels, embs, image_reg, step)
            with self.timer("backward"):
                self.accel.backward(total)
            with self.timer("optimizer"):
                if self.accel.sync_gradients:
                    self.sync_gradients()
                if self.accel.sync_gradients and self.cfg.grad_clip:
                    self.accel.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
        rec = self.objective.logged(losses, step)
        rec["lr"] = self.scheduler.get_last_lr()[0]
        rec["temperature"] = self.objective.temperature
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
        plot_curves(self.metrics, self.out / CURVES_FILE, self.schedule.marks())
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
            "data_report": self.batch.report(),
            "wall_time_s": round(time.time() - self.t0, 1),
            "code_version": code_version(),
            "world_size": self.world_size,
        }
        dtype = None if self.cfg.save_dtype == "float32" else getattr(torch, self.cfg.save_dtype)
        model.save_pretrained(self.out, training=info, dtype=dtype)
        logger.info("checkpoint written to %s (%.0f s)", self.out, time.time() - self.t0)
        return self.out


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False,
          cache_dir: str | Path | None = None) -> Path:
    trainer = Trainer(cfg, out_dir, cache_dir)
    try:
        return trainer.run(resume=resume)
    finally:
        trainer.close()
