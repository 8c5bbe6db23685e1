"""Does the LM of a random-init tiny LLaVA learn to read its image tokens?

A diagnostic for the tiny preset (issue #3): trains the generative path only,
on VQA about synthetic scenes, and prints teacher-forced first-answer-token
accuracy per question type on a fixed held-in set every `--every` steps.
Chance is one over the answers of a type (colour 1/6, size 1/2, count 1/4,
position 1/4); a model that ignores the image sits at the majority answer.

    python scripts/vqa_probe.py --kinds color                 # one question type
    python scripts/vqa_probe.py --kinds color size count position
    python scripts/vqa_probe.py --patch-init dct --image-mean 0.94 --align-steps 200 --steps 400
    python scripts/vqa_probe.py --swatch 0.3 --kinds color    # a plain square covering 0.3 of the side

`--align-steps N`: the first N steps are captions only (stage 1, as
`TrainConfig.align_steps`). Numbers measured with it are in the README's
training section.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.config import SugarConfig, TinyConfig  # noqa: E402
from model.sample import Sample, Slice  # noqa: E402
from model.sugar import SugarModel  # noqa: E402
from model.tiny import build_tiny  # noqa: E402
from training.collate import encode_gen  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import GenExample  # noqa: E402
from training.losses import GenerativeLoss  # noqa: E402
from training.schedule import warmup_cosine  # noqa: E402
from training.world import COLORS, WorldSplit, vqa_for  # noqa: E402


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--every", type=int, default=50, help="evaluate every N steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--kinds", nargs="+", default=["color", "size", "count", "position"])
    p.add_argument("--align-steps", type=int, default=0, help="caption-only steps first")
    p.add_argument("--patch-size", type=int, default=16)
    p.add_argument("--patch-init", default="random", choices=["random", "dct"])
    p.add_argument("--image-mean", type=float, default=None, help="processor mean (default CLIP's)")
    p.add_argument("--swatch", type=float, default=0.0,
                   help="> 0: colour questions on a plain square of this fraction of the side")
    p.add_argument("--eval-size", type=int, default=160)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", default="{}", help="JSON TinyConfig overrides (tests use a smaller model)")
    # the staged recipe's levers (training/vision.py)
    p.add_argument("--vision-steps", type=int, default=0,
                   help="stage 0 first: N steps of the caption-words objective on the vision side")
    p.add_argument("--vision-lr", type=float, default=2e-3)
    p.add_argument("--vision-batch", type=int, default=32)
    p.add_argument("--standardize", nargs="?", const="global", default=None, choices=["global", "feature"],
                   help="after stage 0, fold a standardisation into the projector: centred, one scale "
                        "(global, the default) or one per feature")
    p.add_argument("--image-scale", type=float, default=1.0,
                   help="with --standardize: the image tokens' RMS in units of the text embeddings'")
    p.add_argument("--freeze-vision", action="store_true",
                   help="train the LM alone (vision tower and projector frozen)")
    p.add_argument("--oracle", default=None, choices=["code", "code-one", "code-one-noise"],
                   help="replace the image tokens by a code per answer (the LM side alone): at all "
                        "positions; at one random position over a fixed background; the same plus "
                        "fresh noise 3x its size on every token")
    return p.parse_args(argv)


class Probe:
    def __init__(self, a: argparse.Namespace) -> None:
        import json

        self.a = a
        self.split = WorldSplit("train", a.seed)
        tc = TinyConfig.from_dict({**TinyConfig().to_dict(), "patch_size": a.patch_size,
                                   "patch_init": a.patch_init, "image_mean": a.image_mean,
                                   "seed": a.seed, **json.loads(a.tiny)})
        self.size = tc.image_size
        corpus = ["What colour is the shape? How many shapes are there? Is the shape small or large? "
                  "Where is the shape? Describe the image."]
        self.model = SugarModel(build_tiny(tc, corpus=corpus), SugarConfig())
        self.vlm = self.model.vlm
        self.vision_rows: list[dict] = []
        self.oracle_answer: list[str] = []
        if a.oracle:
            self._install_oracle(a.oracle)

    def _install_oracle(self, mode: str) -> None:
        """Replace the projector's output by a code per answer word (teacher-forced batches
        only: `self.oracle_answer` holds the answers of the images being encoded)."""
        proj = self.model.backbone.projector()
        tau = float(self.model.backbone.text_embedding_rms())
        d = self.model.backbone.projector_output().out_features
        g = torch.Generator().manual_seed(self.a.seed + 7)
        codes: dict[str, torch.Tensor] = {}
        background = torch.randn(d, generator=g) * tau

        def code(ans: str) -> torch.Tensor:
            if ans not in codes:
                codes[ans] = torch.randn(d, generator=g) * tau
            return codes[ans]

        def hook(_m, _inp, out):
            n, t, _ = out.shape
            new = background.expand(n, t, d).clone() if mode != "code" else out.new_zeros(n, t, d)
            for i, ans in enumerate(self.oracle_answer[:n]):
                if mode == "code":
                    new[i] = code(ans)
                else:
                    new[i, random.randrange(t)] = code(ans)
            if mode == "code-one-noise":
                new = new + torch.randn(n, t, d) * 3 * tau
            return new + 0 * out  # keep the graph (the tower gets zero gradient)

        proj.register_forward_hook(hook)

    def caption_pairs(self, rng: random.Random, n: int) -> list[tuple]:
        pairs = []
        for _ in range(n):
            sc = self.split.scene(rng)
            pairs.append((sc.render(self.size), sc.caption()))
        return pairs

    def vision_stage(self) -> None:
        """Stage 0 (training/vision.py), then optionally the projector standardisation."""
        from training.vision import standardize_projector, train_vision

        a = self.a
        if a.vision_steps:
            vrng = random.Random(a.seed + 5)
            t0 = time.time()
            self.vision_rows = train_vision(self.model.backbone, lambda _s: self.caption_pairs(vrng, a.vision_batch),
                                            a.vision_steps, lr=a.vision_lr, batch=a.vision_batch, log_every=100)
            print({"vision_stage_s": round(time.time() - t0, 1), **self.vision_rows[-1]}, flush=True)
        if a.standardize:
            srng = random.Random(a.seed + 6)
            print(standardize_projector(self.model.backbone, [im for im, _ in self.caption_pairs(srng, 256)],
                                        per_feature=a.standardize == "feature", scale=a.image_scale),
                  flush=True)

    def example(self, rng: random.Random, caption: bool = False) -> GenExample:
        a = self.a
        if caption:
            sc = self.split.scene(rng, rng.choice(["single", "count"]))
            return GenExample(Sample([Slice.of_image(sc.render(self.size)), Slice.of_text("Describe the image.")]),
                              sc.caption(), "caption")
        scene_kinds = ["single", "count"] + (["relation"] if "relation" in a.kinds else [])
        while True:
            sc = self.split.scene(rng, rng.choice(scene_kinds))
            kind, q, answer = vqa_for(sc, rng)
            if kind not in a.kinds:
                continue
            if a.swatch > 0 and kind == "color":
                img = Image.new("RGB", (self.size, self.size), (240, 240, 240))
                side = max(1, int(self.size * a.swatch))
                x0, y0 = rng.randrange(self.size - side + 1), rng.randrange(self.size - side + 1)
                img.paste(Image.new("RGB", (side, side), COLORS[answer]), (x0, y0))
            else:
                img = sc.render(self.size)
            return GenExample(Sample([Slice.of_image(img), Slice.of_text(q)]), answer, kind)

    def accuracy(self, examples: list[GenExample]) -> dict[str, float]:
        self.vlm.eval()
        hits: dict[str, list[bool]] = {}
        with torch.no_grad():
            for i in range(0, len(examples), 40):
                chunk = examples[i : i + 40]
                self.oracle_answer = [ex.answer for ex in chunk]
                batch, labels = encode_gen(self.model, chunk)
                logits = self.vlm(**batch.model_inputs()).logits
                for j, ex in enumerate(chunk):
                    pos = int((labels[j] != -100).nonzero()[0])
                    hits.setdefault(ex.kind, []).append(int(logits[j, pos - 1].argmax()) == int(labels[j, pos]))
        self.vlm.train()
        return {k: round(sum(v) / len(v), 3) for k, v in sorted(hits.items())}

    def run(self) -> list[dict]:
        a = self.a
        torch.manual_seed(a.seed)
        rng, erng = random.Random(a.seed + 1), random.Random(a.seed + 99)
        evalset = [self.example(erng) for _ in range(a.eval_size)]
        t_start = time.time()
        self.vision_stage()
        if a.freeze_vision:
            from training.vision import set_vision_trainable

            set_vision_trainable(self.model.backbone, False)
        opt = torch.optim.AdamW([p for p in self.vlm.parameters() if p.requires_grad], lr=a.lr,
                                weight_decay=0.01)
        defaults = TrainConfig()  # the training loop's schedule: warm-up, cosine to min_lr_ratio
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(
            s, a.steps, defaults.warmup, defaults.min_lr_ratio))
        gen_loss = GenerativeLoss()
        self.vlm.train()
        rows, t0 = [], time.time()
        for step in range(a.steps):
            examples = [self.example(rng, step < a.align_steps) for _ in range(a.batch)]
            self.oracle_answer = [ex.answer for ex in examples]
            batch, labels = encode_gen(self.model, examples)
            logits = self.vlm(**batch.model_inputs()).logits
            loss = gen_loss(logits, labels)["gen_loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in self.vlm.parameters() if p.requires_grad], 1.0)
            opt.step()
            sched.step()
            if (step + 1) % a.every == 0 or step + 1 == a.steps:
                row = {"step": step + 1, "loss": round(loss.item(), 3), **self.accuracy(evalset),
                       "elapsed_s": round(time.time() - t0, 1), "total_s": round(time.time() - t_start, 1)}
                print(row, flush=True)
                rows.append(row)
        return rows


def main(argv: list[str] | None = None) -> list[dict]:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    return Probe(a).run()


if __name__ == "__main__":
    main()
