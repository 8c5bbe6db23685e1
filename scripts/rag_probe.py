"""Does a checkpoint's LM read the right banner inside a RAG context? (issue #20)

The inner loop for the RAG answers, as `scripts/vqa_probe.py` is for VQA: start from a
checkpoint (the shipped one by default), train its LM on generative examples only (the
vision side frozen, as in the staged recipe), and measure the banner-colour answer
(teacher-forced first answer token) over the **built-in collection's** houses, in the
prompt the server builds (`model.prompts.rag_parts`), with the asked house's document
alone, ranked first, third or anywhere among three, anywhere among five, and with the
banners told in words.

    python scripts/rag_probe.py --steps 0                  # the checkpoint as it is
    python scripts/rag_probe.py --steps 300 --lr 1e-3 --gold-first 0.9 --context-order best_last \
        --kinds '{"rag": 0.7, "vqa": 0.3}'                 # lever H of docs/METHOD.md §11.6
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.sample import Sample, Slice  # noqa: E402
from model.sugar import SugarModel  # noqa: E402
from training.collate import encode_gen  # noqa: E402
from training.data import GenExample, SyntheticPools, builtin_houses  # noqa: E402
from training.losses import GenerativeLoss  # noqa: E402
from training.schedule import warmup_cosine  # noqa: E402
from training.vision import set_vision_trainable  # noqa: E402

LAYOUTS = ("k1", "k3-rank1", "k3-rank3", "k3", "k5", "text-k3")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", default="model/default_checkpoint")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--kinds", default='{"rag": 0.5, "vqa": 0.5}',
                   help="JSON: the generative kinds' shares (training.data SyntheticPools.gen_example)")
    p.add_argument("--gold-first", type=float, default=0.0,
                   help="the probability that a RAG example's gold document is ranked first, else anywhere")
    p.add_argument("--context-order", choices=["ranked", "best_last"],
                   help="the prompts' context order (model.config.PromptFormat; default: the checkpoint's)")
    p.add_argument("--question", choices=["colour", "shape"], default="colour",
                   help="the banner question measured")
    p.add_argument("--houses", type=int, default=1500, help="training houses (train split)")
    p.add_argument("--eval-houses", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-vision", action="store_true",
                   help="train the vision tower and projector too (default: frozen, as in the staged recipe)")
    p.add_argument("--save", default="", help="save the continued model here (SugarModel.save_pretrained)")
    return p.parse_args(argv)


def eval_set(n: int, seed: int, question: str = "colour") -> list[tuple[str, GenExample]]:
    """(layout, example) for the built-in houses' colour (or shape) questions."""
    every = builtin_houses()
    houses = every[:n]
    rng = random.Random(seed)
    out = []
    which = ("colour", "shape").index(question)
    for h in houses:
        q, a = Sample([Slice.of_text(h.questions()[which])]), (h.banner.color, h.banner.shape)[which]
        others = [o for o in every if o is not h]
        for layout in LAYOUTS:
            k = 3 if layout.startswith("text") else int(layout[1])
            chosen = rng.sample(others, k - 1)
            pos = 0 if layout.endswith("rank1") or k == 1 else k - 1 if layout.endswith("rank3") else rng.randrange(k)
            chosen.insert(pos, h)
            ctx = [Sample([Slice.of_text(o.in_words())]) if layout.startswith("text") else o.document()
                   for o in chosen]
            out.append((layout, GenExample(q, a, "rag", documents=ctx)))
    return out


def accuracy(model: SugarModel, items: list[tuple[str, GenExample]]) -> dict[str, float]:
    vlm = model.vlm
    was = vlm.training
    vlm.eval()
    hits: dict[str, list[bool]] = {}
    with torch.no_grad():
        for i in range(0, len(items), 32):
            chunk = items[i : i + 32]
            batch, labels = encode_gen(model, [ex for _, ex in chunk])
            logits = vlm(**batch.model_inputs()).logits
            for j, (layout, _) in enumerate(chunk):
                pos = int((labels[j] != -100).nonzero()[0])
                hits.setdefault(layout, []).append(int(logits[j, pos - 1].argmax()) == int(labels[j, pos]))
    vlm.train(was)
    return {k: round(sum(v) / len(v), 3) for k, v in hits.items()}


def main(argv: list[str] | None = None) -> list[dict]:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model = SugarModel.from_pretrained(a.init)
    if a.context_order:
        model.config.prompts.context_order = a.context_order
    items = eval_set(a.eval_houses, a.seed + 99, a.question)
    rows = [{"step": 0, **accuracy(model, items)}]
    print(rows[-1], flush=True)
    if not a.steps:
        return rows
    kinds = json.loads(a.kinds)
    pools = SyntheticPools("train", a.seed, 1500, 0, a.houses)
    pools.gold_first = a.gold_first
    rng = random.Random(a.seed + 1)
    vlm = model.vlm
    set_vision_trainable(model.backbone, a.train_vision)
    params = [p for p in vlm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, a.steps, 20, 0.05))
    gen_loss = GenerativeLoss()
    vlm.train()
    t0 = time.time()
    for step in range(a.steps):
        examples = [pools.gen_example(rng, kinds) for _ in range(a.batch)]
        batch, labels = encode_gen(model, examples)
        loss = gen_loss(vlm(**batch.model_inputs()).logits, labels)["gen_loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if (step + 1) % a.every == 0 or step + 1 == a.steps:
            rows.append({"step": step + 1, "loss": round(loss.item(), 3), **accuracy(model, items),
                         "elapsed_s": round(time.time() - t0, 1)})
            print(rows[-1], flush=True)
    if a.save:
        model.save_pretrained(a.save)
    return rows


if __name__ == "__main__":
    main()
