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
from training.config import TrainConfig  # noqa: E402
from training.data import GenExample  # noqa: E402
from training.loop import encode_gen, warmup_cosine  # noqa: E402
from training.losses import GenerativeLoss  # noqa: E402
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
        self.lm = self.model.lm

    def example(self, rng: random.Random, caption: bool = False) -> GenExample:
        a = self.a
        if caption:
            sc = self.split.scene(rng, rng.choice(["single", "count"]))
            return GenExample(Sample([Slice.of_image(sc.render(self.size)), Slice.of_text("Describe the image.")]),
                              sc.caption(), "caption")
        while True:
            sc = self.split.scene(rng, rng.choice(["single", "count"]))
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
        self.lm.eval()
        hits: dict[str, list[bool]] = {}
        with torch.no_grad():
            for i in range(0, len(examples), 40):
                chunk = examples[i : i + 40]
                batch, labels = encode_gen(self.model, chunk)
                logits = self.lm(**batch.model_inputs()).logits
                for j, ex in enumerate(chunk):
                    pos = int((labels[j] != -100).nonzero()[0])
                    hits.setdefault(ex.kind, []).append(int(logits[j, pos - 1].argmax()) == int(labels[j, pos]))
        self.lm.train()
        return {k: round(sum(v) / len(v), 3) for k, v in sorted(hits.items())}

    def run(self) -> list[dict]:
        a = self.a
        torch.manual_seed(a.seed)
        rng, erng = random.Random(a.seed + 1), random.Random(a.seed + 99)
        evalset = [self.example(erng) for _ in range(a.eval_size)]
        opt = torch.optim.AdamW(self.lm.parameters(), lr=a.lr, weight_decay=0.01)
        defaults = TrainConfig()  # the training loop's schedule: warm-up, cosine to min_lr_ratio
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(
            s, a.steps, defaults.warmup, defaults.min_lr_ratio))
        gen_loss = GenerativeLoss()
        self.lm.train()
        rows, t0 = [], time.time()
        for step in range(a.steps):
            batch, labels = encode_gen(self.model, [self.example(rng, step < a.align_steps)
                                                    for _ in range(a.batch)])
            logits = self.lm(**batch.model_inputs()).logits
            loss = gen_loss(logits, labels)["gen_loss"]
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.lm.parameters(), 1.0)
            opt.step()
            sched.step()
            if (step + 1) % a.every == 0 or step + 1 == a.steps:
                row = {"step": step + 1, "loss": round(float(loss), 3), **self.accuracy(evalset),
                       "elapsed_s": round(time.time() - t0, 1)}
                print(row, flush=True)
                rows.append(row)
        return rows


def main(argv: list[str] | None = None) -> list[dict]:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    return Probe(a).run()


if __name__ == "__main__":
    main()
