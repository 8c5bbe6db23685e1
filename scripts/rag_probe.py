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
        --kinds '{"rag": 0.7, "vqa": 0.3}'                 # lever H of docs/EXPERIMENTS.md §11.6

`--suite world` (issue #30) measures instead, over the same houses, every banner attribute
(`attr:<attribute>`: the canonical question, the house ranked first of three documents, as the
server's hybrid retrieval ranks a named house), every phrasing
family (`family:<family>`, a random attribute; training/phrasing.py), and abstention: the
share answered "not in the documents" where the documents cannot answer (`abstain:absent` —
the house is not among them —, `abstain:unknown` — a held-out question about what banners do
not show; `abstain:unknown_mixed` the same with two held-out licence passages after the
house —, `abstain:text` — held-out licence passages, Apache-2.0 and GPL-3) and where they can
(`false_abstain`, over the attribute and family items); `mixed` asks a house ranked first with two
held-out licence passages after it (an index holding uploads beside the houses), and
`mixed_abstain` is how often that answerable question is answered "not in the documents". The
server decides by a margin threshold, not the greedy token: `served:` applies the checkpoint's
(or `--abstain-threshold`), `cal:` the threshold fitted in-sample to abstain on 3 % of the
answerable items (`cal:threshold`), as `sugar eval --calibrate` fits it on the evaluation split.
`--unknown-questions wide` and `--text-distractors` are TrainConfig.unknown_questions and
rag_text_distractors; `--families` may name the training-only `filler`. `--linear-readout` first reports
what a linear classifier reads from the frozen image tokens of the training scenes' banners
(`readout:<attribute>` on the built-in houses): is the attribute in the tokens at all?
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

from model.kernels import set_threads  # noqa: E402
from model.sample import Sample, Slice  # noqa: E402
from model.sugar import SugarModel, abstain_margin, abstain_token  # noqa: E402
from training.build import build_model  # noqa: E402
from training.collate import encode_gen  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import GenExample, SyntheticPools, builtin_houses, licence_passages  # noqa: E402
from training.evaluate import calibrate_threshold  # noqa: E402
from training.losses import GenerativeLoss  # noqa: E402
from training.phrasing import ABSTAIN, FAMILIES, TEXT_HELD_OUT, TRAINED, unknown_question  # noqa: E402
from training.schedule import warmup_cosine  # noqa: E402
from training.vision import set_vision_trainable, vision_parameters  # noqa: E402
from training.world import ATTRIBUTES, answer_of  # noqa: E402

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
                   help="the banner question measured (suite layouts)")
    p.add_argument("--suite", choices=["layouts", "world"], default="layouts",
                   help="layouts: one question in six context layouts; world: every attribute, every "
                   "phrasing family, abstention")
    p.add_argument("--linear-readout", action="store_true",
                   help="first: a linear readout of each banner attribute from the frozen image tokens")
    p.add_argument("--families", default=None,
                   help="JSON list: the phrasing families training draws (default: training/phrasing.TRAINED)")
    p.add_argument("--houses", type=int, default=1500, help="training houses (train split)")
    p.add_argument("--eval-houses", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-vision", action="store_true",
                   help="train the vision tower and projector too (default: frozen, as in the staged recipe)")
    p.add_argument("--vision-lr-scale", type=float, default=1.0,
                   help="with --train-vision: the vision side's learning rate as a multiple of --lr")
    p.add_argument("--unknown-questions", choices=["base", "wide", "swapped", "words"], default="base",
                   help="the abstention examples' unanswerable questions (TrainConfig.unknown_questions)")
    p.add_argument("--text-distractors", type=float, default=0.0,
                   help="RAG examples with real-text distractors (TrainConfig.rag_text_distractors)")
    p.add_argument("--unknown-text-distractors", type=float, default=0.0,
                   help="unanswerable questions about a present house with real-text distractors "
                        "(TrainConfig.unknown_text_distractors)")
    p.add_argument("--abstain-unknown-share", type=float, default=0.3,
                   help="the abstention examples' unanswerable questions about a present house "
                        "(TrainConfig.abstain_unknown_share)")
    p.add_argument("--tokenizer-words", default=None,
                   help='a JSON list of words the tokenizer keeps as one piece, e.g. \'[" or"]\' '
                        "(TrainConfig.tokenizer_words)")
    p.add_argument("--tokenizer-words-init", choices=["mean", "move"], default="mean",
                   help="the new pieces' embedding rows (TrainConfig.tokenizer_words_init)")
    p.add_argument("--abstain-threshold", type=float, default=None,
                   help="also report the served rule (`served:<key>`: abstained when the first answer token's "
                        "margin for the abstention is at least this; default: the checkpoint's abstain_threshold)")
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


def world_set(n: int, seed: int) -> list[tuple[str, GenExample]]:
    """(key, example) of the world suite (module docstring) for the first `n` built-in houses."""
    every = builtin_houses()
    rng = random.Random(seed)
    texts = licence_passages(held_out=True)
    mixing = random.Random(seed + 7)  # the unknown_mixed items' own draws: the other items stay as they were
    out = []

    def among(h, k=3):  # ranked first, as served (the prompt's order: the checkpoint's context_order)
        return [o.document() for o in [h, *rng.sample([o for o in every if o is not h], k - 1)]]

    def q(s):
        return Sample([Slice.of_text(s)])

    for h in every[:n]:
        for attr in ATTRIBUTES:
            _, question, answer = h.question(rng, "canonical", (attr,))
            out.append((f"attr:{attr}", GenExample(q(question), answer, "rag", documents=among(h))))
        for family in FAMILIES:
            _, question, answer = h.question(rng, family)
            out.append((f"family:{family}", GenExample(q(question), answer, "rag", documents=among(h))))
        if texts:  # the asked house ranked first, real text after it (an index with uploads beside the houses)
            _, question, answer = h.question(rng, "canonical")
            out.append(("mixed", GenExample(q(question), answer, "rag",
                                            documents=[h.document(), *[q(t) for t in rng.sample(texts, 2)]])))
        absent = [o.document() for o in rng.sample([o for o in every if o is not h], 3)]
        out.append(("abstain:absent", GenExample(q(h.question(rng)[1]), ABSTAIN, "abstain", documents=absent)))
        unknown = q(unknown_question(h.name, True, rng))
        out.append(("abstain:unknown", GenExample(unknown, ABSTAIN, "abstain", documents=among(h))))
        if texts:  # the same question, the house ranked first with real text after it (as `mixed`)
            out.append(("abstain:unknown_mixed", GenExample(unknown, ABSTAIN, "abstain", documents=[
                h.document(), *[q(t) for t in mixing.sample(texts, 2)]])))
        if texts:
            out.append(("abstain:text", GenExample(q(rng.choice(TEXT_HELD_OUT)), ABSTAIN, "abstain",
                                                   documents=[q(t) for t in rng.sample(texts, 2)])))
    return out


def accuracy(model: SugarModel, items: list[tuple[str, GenExample]],
             threshold: float | None = None) -> dict[str, float]:
    """Teacher-forced first answer token right, per key; `false_abstain`: the share of the
    answerable items (attr:, family:) whose first token is the abstention's. Then the server's
    rule (server/engine.py Abstain: abstained where the first token's log-probability margin for
    the abstention over the best other token is at least a threshold) twice: `served:` at
    `threshold` (the checkpoint's, or --abstain-threshold), and `cal:` at the threshold that
    abstains on CALIBRATION_FALSE_ABSTENTION of these answerable items (`cal:threshold`; as
    `sugar eval --calibrate` fits it, here in-sample) — how well the margin separates the two."""
    vlm = model.vlm
    was = vlm.training
    vlm.eval()
    hits: dict[str, list[bool]] = {}
    margins: list[tuple[str, float]] = []  # (key or "answerable", margin) of the items the rule decides
    abstain_first = abstain_token(model.backbone)  # the server's and the evaluation's token
    with torch.no_grad():
        for i in range(0, len(items), 32):
            chunk = items[i : i + 32]
            batch, labels = encode_gen(model, [ex for _, ex in chunk])
            logits = vlm(**batch.model_inputs()).logits
            for j, (key, ex) in enumerate(chunk):
                pos = int((labels[j] != -100).nonzero()[0])
                pred = int(logits[j, pos - 1].argmax())
                hits.setdefault(key, []).append(pred == int(labels[j, pos]))
                answerable = key.startswith(("attr:", "family:", "mixed"))
                if answerable:
                    hits.setdefault("mixed_abstain" if key == "mixed" else "false_abstain", []).append(
                        pred == abstain_first)
                if answerable or ex.answer == ABSTAIN:
                    margins.append(("answerable" if answerable else key,
                                    float(abstain_margin(logits[j, pos - 1 : pos].float(), abstain_first)[0])))
    vlm.train(was)
    out = {k: round(sum(v) / len(v), 3) for k, v in hits.items()}
    cal = calibrate_threshold([m for k, m in margins if k == "answerable"])
    for prefix, t in (("served", threshold), ("cal", cal)):
        if t is None:
            continue
        by: dict[str, list[bool]] = {}
        for k, m in margins:
            by.setdefault("false_abstain" if k == "answerable" else k, []).append(m >= t)
        out.update({f"{prefix}:{k}": round(sum(v) / len(v), 3) for k, v in by.items()})
    out["cal:threshold"] = round(cal, 2)
    return out


def linear_readout(model: SugarModel, houses: int, seed: int, steps: int = 300) -> dict[str, float]:
    """Is each banner attribute in the frozen image tokens? A linear classifier per attribute on
    the tokens (concatenated, standardised per feature) of training-split banners, scored on the
    built-in houses' banners (held-out (shape, colour) combinations)."""
    pools = SyntheticPools("train", seed, 0, 0, houses)
    train = [h.banner for h in pools.houses]
    test = [h.banner for h in builtin_houses()]
    with torch.no_grad():
        feats = [model.backbone.image_tokens([b.render() for b in group]).flatten(1).float()
                 for group in (train, test)]
    mu, sd = feats[0].mean(0), feats[0].std(0) + 1e-6
    xtr, xte = ((f - mu) / sd for f in feats)
    out = {}
    for attr in ATTRIBUTES:
        labels = sorted({answer_of(b, attr) for b in train + test})
        ytr = torch.tensor([labels.index(answer_of(b, attr)) for b in train])
        yte = torch.tensor([labels.index(answer_of(b, attr)) for b in test])
        g = torch.Generator().manual_seed(seed)
        lin = torch.nn.Linear(xtr.shape[1], len(labels))
        torch.nn.init.normal_(lin.weight, std=0.01, generator=g)
        opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=1e-3)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(lin(xtr), ytr)
            opt.zero_grad()
            loss.backward()
            opt.step()
        out[f"readout:{attr}"] = round(float((lin(xte).argmax(1) == yte).float().mean()), 3)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    a = parse(argv)
    set_threads(a.threads)
    torch.manual_seed(a.seed)
    # the probe's recipe as a training config: the warm start and the data knobs as the trainer takes them
    cfg = TrainConfig(init=a.init, context_order=a.context_order, rag_gold_first=a.gold_first,
                      unknown_questions=a.unknown_questions, rag_text_distractors=a.text_distractors,
                      abstain_unknown_share=a.abstain_unknown_share,
                      unknown_text_distractors=a.unknown_text_distractors,
                      tokenizer_words=json.loads(a.tokenizer_words or "[]"),
                      tokenizer_words_init=a.tokenizer_words_init,
                      phrasings=tuple(json.loads(a.families)) if a.families else TRAINED)
    model = build_model(cfg, [])
    items = (world_set if a.suite == "world" else lambda n, s: eval_set(n, s, a.question))(a.eval_houses, a.seed + 99)
    if a.linear_readout:
        print(linear_readout(model, a.houses, a.seed), flush=True)
    thr = a.abstain_threshold if a.abstain_threshold is not None else model.config.abstain_threshold
    rows = [{"step": 0, **accuracy(model, items, thr)}]
    print(rows[-1], flush=True)
    if not a.steps:
        return rows
    kinds = json.loads(a.kinds)
    pools = SyntheticPools("train", a.seed, 1500, 0, a.houses)
    pools.follow(cfg)
    pools.tokenize = model.backbone.tokenizer.tokenize
    rng = random.Random(a.seed + 1)
    vlm = model.vlm
    set_vision_trainable(model.backbone, a.train_vision)
    params = [p for p in vlm.parameters() if p.requires_grad]
    vision = {id(p) for p in vision_parameters(model.backbone)}
    opt = torch.optim.AdamW([{"params": [p for p in params if id(p) not in vision]},
                             {"params": [p for p in params if id(p) in vision], "lr": a.lr * a.vision_lr_scale}],
                            lr=a.lr, weight_decay=0.01)
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
            rows.append({"step": step + 1, "loss": round(loss.item(), 3), **accuracy(model, items, thr),
                         "elapsed_s": round(time.time() - t0, 1)})
            print(rows[-1], flush=True)
    if a.save:
        model.save_pretrained(a.save)
    return rows


if __name__ == "__main__":
    main()
