"""`sugar eval`: the paper's evaluation at small scale, on the held-out test split.

- interleaved retrieval: query text (figure descriptions, in order) -> the page
  that shows them; R@1/5/10 and MRR ranked by the GA kernel s̄, by raw s and
  by summary-vector cosine; a page counts as relevant when its figures
  contain the described scenes in that order (several pages can);
- fine-grained: minimal-pair accuracy per attribute (MMVP-style: both
  captions must pick their own image);
- generative: VQA exact match per question type; Fashion-MNIST item accuracy
  (generated) and image -> category retrieval R@1 on the official test split;
- RAG: knowledge questions about held-out houses without retrieval, with the
  model's own top-k retrieval, and with the gold document; and with the server's
  hybrid retrieval (`rag.hybrid`: the same embeddings in a DocumentIndex, fused with
  BM25 over the documents' text, as `/retrieve` ranks by default);
- position curve: accuracy vs the gold document's rank among k = 5 (its place in the
  prompt follows the checkpoint's `prompts.context_order`: rank 1 is last for `best_last`);
- the world (issue #30, `world`): every banner attribute asked with the house ranked first of
  three documents (as the server's hybrid retrieval ranks a named house), every question
  phrasing family for the RAG and the VQA questions (training/phrasing.py: `trained` and
  `held_out` means), and abstention: the answer "not in the documents" where the documents
  cannot answer (the house absent, a held-out question about what banners do not show, the
  held-out licence texts Apache-2.0 and GPL-3) and where they can (`false_abstention`),
  decided as the server decides it (SugarConfig.abstain_threshold on the first answer token's
  margin; the abstention token barred otherwise). `calibrate_abstention` picks the threshold on
  the held-out split's first half of houses (false abstention at most 3 %); the report uses the
  second half.

Every part runs on two splits: `heldout` (the test split: held-out
(shape, colour) combinations, unseen house names; its results stay under the
top-level keys) and `seen` (new scenes, renders, pages and houses built from
training combinations and the training name distribution, no instance shared
with training; under the top-level key `seen`, same structure). VQA is also
scored with the image replaced by a blank one (`vqa_blank`: how much the
answers rely on the image). `baselines` mirrors the result paths with
`{"chance", "majority"?}` per metric (majority: always answering the most
frequent answer of the scored items).

Writes a nested JSON, a markdown report and PNG plots; returns the dict.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model.prompts import generation_prompt
from model.sample import Sample, Slice
from model.search import SearchParams
from model.sugar import SliceEmbeddings, SugarModel, abstain_margin, abstain_token

from .data import (
    FASHION_CLASSES,
    SyntheticPools,
    fashion_available,
    fashion_catalog_doc,
    fashion_image,
    image_sample,
    licence_passages,
    load_fashion,
    text,
)
from .phrasing import ABSTAIN, FAMILIES, HELD_OUT, TEXT_HELD_OUT, TRAINED, unknown_question
from .world import ATTRIBUTES, SEEN_NAME_OFFSET, vqa_for

logger = logging.getLogger(__name__)

VQA_TYPES = ("color", "shape", "size", "count", "position", "texture", "relation")
VQA_ANSWERS = {"color": 6, "shape": 4, "size": 2, "count": 4, "position": 4, "texture": 2,
               "relation": 2}  # possible answers per question type (chance = 1 / this)
SPLITS = ("heldout", "seen")
BLANK_RGB = (245, 245, 245)  # the scenes' background: an image with nothing in it


@dataclass
class EvalConfig:
    seed: int = 1234
    n_scenes: int = 600
    n_pages: int = 500  # the retrieval gallery
    n_queries: int = 300
    n_houses: int = 120
    n_vqa_per_type: int = 60
    n_fashion: int = 500
    rag_k: int = 3
    position_k: int = 5
    batch_size: int = 32

    @classmethod
    def medium(cls) -> EvalConfig:
        """Between quick and full: the claims table across seeds and variants."""
        return cls(n_scenes=200, n_pages=120, n_queries=80, n_houses=30, n_vqa_per_type=15,
                   n_fashion=150, batch_size=32)

    @classmethod
    def quick(cls) -> EvalConfig:
        return cls(n_scenes=80, n_pages=60, n_queries=30, n_houses=20, n_vqa_per_type=6,
                   n_fashion=40, batch_size=16)


def _chance_rank_metrics(n_docs: int, relevant: list[set[int]]) -> dict[str, float]:
    """Expected R@k and MRR of a uniformly random ranking (exact)."""
    from math import comb

    out = {"r@1": 0.0, "r@5": 0.0, "r@10": 0.0, "mrr": 0.0}
    for rel in relevant:
        r = max(1, len(rel))
        total = comb(n_docs, r)
        # P(first relevant document at rank i) = C(N - i, r - 1) / C(N, r)
        p_first = [comb(n_docs - i, r - 1) / total for i in range(1, n_docs - r + 2)]
        for k in (1, 5, 10):
            out[f"r@{k}"] += sum(p_first[:k])
        out["mrr"] += sum(p / i for i, p in enumerate(p_first, 1))
    return {k: v / max(1, len(relevant)) for k, v in out.items()}


def _majority(answers: list[str]) -> float:
    from collections import Counter

    return Counter(answers).most_common(1)[0][1] / len(answers) if answers else 0.0


def _rank_metrics(sim: torch.Tensor, relevant: list[set[int]]) -> dict[str, float]:
    order = torch.argsort(sim, dim=1, descending=True)
    ranks = []
    for i, rel in enumerate(relevant):
        hits = [r for r, j in enumerate(order[i].tolist()) if j in rel]
        ranks.append(hits[0] + 1 if hits else 10**9)
    ranks_a = np.array(ranks)
    return {"r@1": float((ranks_a <= 1).mean()), "r@5": float((ranks_a <= 5).mean()),
            "r@10": float((ranks_a <= 10).mean()), "mrr": float((1.0 / ranks_a).mean())}


def _embed(model: SugarModel, samples: list[Sample], bs: int) -> SliceEmbeddings:
    return model.embed(samples, batch_size=bs)


def _cosine(q: SliceEmbeddings, d: SliceEmbeddings) -> torch.Tensor:
    return q.summary @ d.summary.T


def _generate(model: SugarModel, prompts, bs: int, max_new_tokens: int = 8, **kw) -> list[str]:
    out: list[str] = []
    for a in range(0, len(prompts), bs):
        out.extend(model.backbone.generate(prompts[a : a + bs], max_new_tokens=max_new_tokens, **kw))
    return out


def _margins(model: SugarModel, prompts, bs: int) -> list[float]:
    """The abstention margin of each prompt's first answer token (model.sugar.abstain_margin)."""
    bb, token = model.backbone, abstain_token(model.backbone)
    out: list[float] = []
    for a in range(0, len(prompts), bs):
        batch = bb.encode(prompts[a : a + bs], padding_side="left").to(bb.device)
        out.extend(abstain_margin(bb.model(**batch.model_inputs()).logits[:, -1], token).tolist())
    return out


# false abstention the calibrated threshold allows on the calibration half (the goal: <= 5 %)
CALIBRATION_FALSE_ABSTENTION = 0.03


def calibrate_threshold(in_world: list[float], target: float = CALIBRATION_FALSE_ABSTENTION) -> float:
    """The lowest threshold that abstains on at most `target` of the answerable questions'
    margins (abstain iff margin >= threshold)."""
    xs = sorted(in_world, reverse=True)
    allowed = int(target * len(xs))  # margins at or above the threshold
    return float(xs[allowed] + 1e-6) if allowed < len(xs) else float("-inf")


def abstains(margin: float, evidence: float, threshold: float | None, evidence_threshold: float | None) -> bool:
    """The server's rule (server/service.py): the model's margin for the abstention answer at
    or above `threshold`, or the documents' evidence for the question's words
    (index.index.term_evidence) below `evidence_threshold`."""
    return (threshold is not None and margin >= threshold) or (
        evidence_threshold is not None and evidence < evidence_threshold)


def calibrate_thresholds(inside: list[tuple[float, float]], outside: list[tuple[float, float]],
                         target: float = CALIBRATION_FALSE_ABSTENTION) -> tuple[float, float | None]:
    """(margin threshold, evidence threshold): over a grid of evidence thresholds (none, and
    the answerable questions' low evidence quantiles), the margin threshold that keeps the false
    abstentions within `target`; the pair that abstains on the most `outside` questions."""
    best: tuple[float, float, float | None] = (-1.0, float("inf"), None)
    lex_inside = sorted(lex for _, lex in inside)
    every = sorted({lex for _, lex in inside + outside})

    def in_the_gap(q: float) -> float:
        """Midway between `q` and the next lower value seen: the same decisions here, and the
        widest margin on both sides for the questions it has not seen."""
        below = [v for v in every if v < q]
        return (q + below[-1]) / 2 if below else q

    grid: list[float | None] = [None] + sorted({in_the_gap(lex_inside[int(q * (len(lex_inside) - 1))])
                                                for q in (0.0, 0.005, 0.01, 0.02, 0.03)})
    for lex_t in grid:
        kept = [m for m, lex in inside if lex_t is None or lex >= lex_t]  # not already abstained
        budget = target * len(inside) - (len(inside) - len(kept))
        if budget < 0:
            continue
        lm_t = calibrate_threshold(kept, budget / max(1, len(kept)))
        caught = float(np.mean([abstains(m, lex, lm_t, lex_t) for m, lex in outside])) if outside else 0.0
        if caught > best[0]:
            best = (caught, lm_t, lex_t)
    return best[1], best[2]


def _match(pred: str, answer: str) -> bool:
    return pred.strip().strip(".").lower() == answer.strip().lower()


class Evaluator:
    """One split's evaluation; `baselines` fills with the same paths as the results."""

    def __init__(self, model: SugarModel, cfg: EvalConfig | None = None, split: str = "heldout") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.model = model
        self.cfg = cfg or EvalConfig()
        self.split = split
        c = self.cfg
        image_size = max(64, model.backbone.input_image_size)
        if split == "heldout":
            self.pools = SyntheticPools("test", c.seed, c.n_scenes, c.n_pages, c.n_houses, 0, image_size)
        else:
            # training combinations and name distribution, new instances: another seed
            # than any training pool draws with, houses named beyond every training pool
            self.pools = SyntheticPools("train", c.seed + 1, c.n_scenes, c.n_pages, c.n_houses, 0,
                                        image_size, house_offset=SEEN_NAME_OFFSET)
        self.rng = random.Random(f"{c.seed}:{split}")
        self.baselines: dict = {}

    def _baseline(self, path: str, chance: float, majority: float | None = None) -> None:
        node = self.baselines
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = {"chance": chance} if majority is None else {"chance": chance, "majority": majority}

    def sim(self, q: SliceEmbeddings, d: SliceEmbeddings, normalization: str | None = None) -> torch.Tensor:
        return self.model.similarity(q, d, normalization)

    # ----------------------------------------------------------- retrieval
    def retrieval(self) -> dict:
        p, c = self.pools, self.cfg
        docs = [doc for doc, _ in p.pages]
        captions = [[sc.caption() for sc in scenes] for _, scenes in p.pages]
        idx = list(range(len(docs)))
        self.rng.shuffle(idx)
        queries, relevant = [], []
        for i in idx[: c.n_queries]:
            q = _query_from(p.pages[i][1], self.rng)
            qc = [s.text for s in q.slices]
            queries.append(q)
            relevant.append({j for j, caps in enumerate(captions) if _contains_run(caps, qc)})
        qe, de = _embed(self.model, queries, c.batch_size), _embed(self.model, docs, c.batch_size)
        out = {
            "retrieval": _rank_metrics(self.sim(qe, de), relevant),
            "retrieval_raw_s": _rank_metrics(self.sim(qe, de, "none"), relevant),
            "retrieval_cosine": _rank_metrics(_cosine(qe, de), relevant),
        }
        out["retrieval"]["gallery"] = len(docs)
        out["retrieval"]["queries"] = len(queries)
        chance = _chance_rank_metrics(len(docs), relevant)
        for name in ("retrieval", "retrieval_raw_s", "retrieval_cosine"):
            for k, v in chance.items():
                self._baseline(f"{name}.{k}", v)
        return out

    # ----------------------------------------------------------- minimal pairs
    def minimal_pairs(self) -> dict:
        p = self.pools
        cases = [(sc, tw[a], a) for sc, tw in zip(p.scenes, p.twins, strict=True) for a in tw]
        caps = [text(c.caption()) for sc, tw, _ in cases for c in (sc, tw)]
        imgs = [p.scene_sample(c) for sc, tw, _ in cases for c in (sc, tw)]
        te, ie = _embed(self.model, caps, self.cfg.batch_size), _embed(self.model, imgs, self.cfg.batch_size)
        # single-slice samples: s̄ is the same as the local log-kernel ordering
        s = self.sim(te, ie)
        per: dict[str, list[int]] = defaultdict(list)
        for k, (_, _, attr) in enumerate(cases):
            a, b = 2 * k, 2 * k + 1
            ok = s[a, a] > s[a, b] and s[b, b] > s[b, a]
            per[attr].append(int(ok))
        res = {attr: float(np.mean(v)) for attr, v in per.items()}
        res["overall"] = float(np.mean([x for v in per.values() for x in v]))
        res["pairs"] = len(cases)
        for attr in [*per, "overall"]:  # both captions must pick their own image: 1/2 · 1/2
            self._baseline(f"minimal_pairs.{attr}", 0.25)
        return {"minimal_pairs": res}

    # ----------------------------------------------------------- VQA
    def vqa(self) -> dict:
        p, c = self.pools, self.cfg
        by_type: dict[str, list[tuple[Sample, str]]] = defaultdict(list)
        for sc in p.scenes:
            for _ in range(4):
                qtype, q, a = vqa_for(sc, self.rng)
                if len(by_type[qtype]) < c.n_vqa_per_type:
                    by_type[qtype].append((Sample([*p.scene_sample(sc).slices, *text(q).slices]), a))
        items = [(t, s, a) for t, lst in by_type.items() for s, a in lst]
        fmt = self.model.config.prompts
        blank = Image.new("RGB", (p.image_size, p.image_size), BLANK_RGB)
        out: dict = {}
        for key, image_of in (("vqa", None), ("vqa_blank", blank)):
            samples = [s if image_of is None else Sample([Slice.of_image(image_of), *s.slices[1:]])
                       for _, s, _ in items]
            preds = _generate(self.model, [generation_prompt(s, fmt) for s in samples], c.batch_size)
            per: dict[str, list[int]] = defaultdict(list)
            for (t, _, a), pred in zip(items, preds, strict=True):
                per[t].append(int(_match(pred, a)))
            res = {t: float(np.mean(v)) for t, v in per.items()}
            res["overall"] = float(np.mean([x for v in per.values() for x in v]))
            out[key] = res
            answers = {t: [a for tt, _, a in items if tt == t] for t in per}
            for t in per:
                self._baseline(f"{key}.{t}", 1 / VQA_ANSWERS[t], _majority(answers[t]))
            n = len(items)
            self._baseline(f"{key}.overall", sum(len(answers[t]) / VQA_ANSWERS[t] for t in per) / n,
                           sum(_majority(answers[t]) * len(answers[t]) for t in per) / n)
        return out

    # ----------------------------------------------------------- Fashion-MNIST
    def fashion(self) -> dict:
        if not fashion_available():
            logger.info("Fashion-MNIST not found (apt install dataset-fashion-mnist): skipped")
            return {}
        c = self.cfg
        imgs, labels = load_fashion("test")
        idx = np.random.default_rng(c.seed).permutation(len(labels))[: c.n_fashion]
        samples = [image_sample(fashion_image(imgs[i])) for i in idx]
        fmt = self.model.config.prompts
        prompts = [generation_prompt(Sample([*s.slices, *text("What item is this?").slices]), fmt)
                   for s in samples]
        preds = _generate(self.model, prompts, c.batch_size)
        acc = float(np.mean([_match(pr, FASHION_CLASSES[labels[i]]) for pr, i in zip(preds, idx, strict=True)]))
        qe = _embed(self.model, samples, c.batch_size)
        de = _embed(self.model, [fashion_catalog_doc(k) for k in range(10)], c.batch_size)
        top = self.sim(qe, de).argmax(1).numpy()
        r1 = float(np.mean(top == labels[idx]))
        majority = _majority([FASHION_CLASSES[labels[i]] for i in idx])
        self._baseline("fashion_mnist.vqa", 0.1, majority)
        self._baseline("fashion_mnist.retrieval.r@1", 0.1, majority)
        return {"fashion_mnist": {"vqa": acc, "retrieval": {"r@1": r1}, "n": len(idx)}}

    # ----------------------------------------------------------- RAG
    def rag(self) -> dict:
        p, c = self.pools, self.cfg
        fmt = self.model.config.prompts
        houses = p.houses
        qs = []
        for h in houses:
            _, q, a = h.question(self.rng)
            qs.append((h, q, a))
        docs = [h.document() for h in houses]
        de = _embed(self.model, docs, c.batch_size)
        qe = _embed(self.model, [text(q) for _, q, _ in qs], c.batch_size)
        top = torch.topk(self.sim(qe, de), k=c.rag_k, dim=1).indices.tolist()
        gold_index = {h.name: i for i, h in enumerate(houses)}
        prompts_none = [generation_prompt(text(q), fmt) for _, q, _ in qs]
        prompts_own = [generation_prompt(text(q), fmt, [docs[j] for j in top[i]]) for i, (_, q, _) in enumerate(qs)]
        prompts_gold = [generation_prompt(text(q), fmt, [docs[gold_index[h.name]]]) for h, q, _ in qs]
        res = {}
        for name, prompts in (("no_retrieval", prompts_none), ("own_retrieval", prompts_own),
                              ("gold", prompts_gold)):
            preds = _generate(self.model, prompts, c.batch_size)
            res[name] = float(np.mean([_match(pr, a) for pr, (_, _, a) in zip(preds, qs, strict=True)]))
        res["retrieval_r@1"] = float(np.mean([top[i][0] == gold_index[h.name] for i, (h, _, _) in enumerate(qs)]))
        res["hybrid"] = self._rag_hybrid(qs, docs, de, qe, gold_index)
        res["k"] = c.rag_k
        kinds = ["color" if q.startswith("What colour") else "shape" for _, q, _ in qs]
        chance = float(np.mean([1 / VQA_ANSWERS[k] for k in kinds]))
        majority = sum(_majority([a for (_, _, a), kk in zip(qs, kinds, strict=True) if kk == k])
                       * kinds.count(k) for k in set(kinds)) / len(qs)
        for name in ("no_retrieval", "own_retrieval", "gold", "hybrid.own_retrieval"):
            self._baseline(f"rag.{name}", chance, majority)
        self._baseline("rag.retrieval_r@1", 1 / len(docs))
        self._baseline("rag.hybrid.retrieval_r@1", 1 / len(docs))
        self._baseline("position_curve", chance, majority)
        # position curve: gold at each rank among k documents (placed by fmt.context_order)
        curve = []
        k = c.position_k
        for pos in range(k):
            prompts, answers = [], []
            for i, (h, q, a) in enumerate(qs):
                rng = random.Random(f"{c.seed}:{i}")
                others = rng.sample([d for j, d in enumerate(docs) if j != gold_index[h.name]], k - 1)
                ctx = others[:pos] + [docs[gold_index[h.name]]] + others[pos:]
                prompts.append(generation_prompt(text(q), fmt, ctx))
                answers.append(a)
            preds = _generate(self.model, prompts, c.batch_size)
            curve.append(float(np.mean([_match(pr, a) for pr, a in zip(preds, answers, strict=True)])))
        return {"rag": res, "position_curve": curve}

    def _rag_hybrid(self, qs, docs: list[Sample], de: SliceEmbeddings, qe: SliceEmbeddings,
                    gold_index: dict[str, int]) -> dict:
        """Retrieval as the server does it by default: the documents in a DocumentIndex, each
        question ranked by mode "hybrid" (GA kernel fused with BM25 over the documents' text)."""
        import tempfile

        from index.embedding import document_vectors, open_for_model
        from index.ingest import SourcePlan, write

        k, fmt = self.cfg.rag_k, self.model.config.prompts
        with tempfile.TemporaryDirectory() as tmp:
            index = open_for_model(tmp, self.model)
            plan = SourcePlan([Sample(d.slices, id=str(i)) for i, d in enumerate(docs)],
                              vectors=[document_vectors(de, i) for i in range(len(docs))])
            write(index, [plan], None, self.model.embedding_version)
            tops = [[int(h.id) for h in index.search(document_vectors(qe, i), SearchParams(k=k, mode="hybrid"), q)]
                    for i, (_, q, _) in enumerate(qs)]
            index.close()
        prompts = [generation_prompt(text(q), fmt, [docs[j] for j in top])
                   for top, (_, q, _) in zip(tops, qs, strict=True)]
        preds = _generate(self.model, prompts, self.cfg.batch_size)
        return {"retrieval_r@1": float(np.mean([top[0] == gold_index[h.name] for top, (h, _, _)
                                                in zip(tops, qs, strict=True)])),
                "own_retrieval": float(np.mean([_match(pr, a) for pr, (_, _, a) in zip(preds, qs, strict=True)]))}

    # ----------------------------------------------------------- the world (issue #30)
    def world_items(self, houses, absent) -> dict[str, list[tuple[str, Sample, str]]]:
        """(key, question, answer) by group: `attributes` and `families` about `houses` (in the
        index), `outside`: questions the index cannot answer — about `absent` houses, held-out
        questions about what banners do not show, held-out questions about the licence texts."""
        rng = random.Random(f"{self.cfg.seed}:{self.split}:world:{houses[0].name}")
        items: dict[str, list] = {"attributes": [], "families": [], "outside": []}
        for h, gone in zip(houses, absent, strict=False):
            for attr in ATTRIBUTES:
                _, q, a = h.question(rng, "canonical", (attr,))
                items["attributes"].append((attr, text(q), a))
            for family in FAMILIES:
                _, q, a = h.question(rng, family)
                items["families"].append((family, text(q), a))
            items["outside"].append(("absent_house", text(gone.question(rng, rng.choice(FAMILIES))[1]), ABSTAIN))
            items["outside"].append(("unknown_question", text(unknown_question(h.name, True, rng)), ABSTAIN))
            items["outside"].append(("licence_text", text(rng.choice(TEXT_HELD_OUT)), ABSTAIN))
        return items

    def _world_evidence(self, items: dict[str, list]) -> dict[str, list[tuple[list[Sample], float, float]]]:
        """Per item, as the server serves it: the hybrid top-k of an index of the split's houses
        and the held-out licence passages, their evidence for the question's words (the server's
        `index.index.term_evidence`; 0 without any text) and the abstention margin of the first
        answer token with those documents."""
        import tempfile

        from index.embedding import document_vectors, open_for_model
        from index.index import term_evidence
        from index.ingest import SourcePlan, write

        model, c = self.model, self.cfg
        fmt = model.config.prompts
        docs = [h.document() for h in self.pools.houses]
        docs += [Sample([Slice.of_text(t)], id=f"licence-{i}", metadata={"kind": "licence"})
                 for i, t in enumerate(licence_passages(held_out=True))]
        out: dict[str, list] = {}
        with tempfile.TemporaryDirectory() as tmp:
            index = open_for_model(tmp, model)
            de = _embed(model, docs, c.batch_size)
            write(index, [SourcePlan(docs, vectors=[document_vectors(de, i) for i in range(len(docs))])], None,
                  model.embedding_version)
            by_id = {d.id: d for d in docs}
            for group, rows in items.items():
                qe = _embed(model, [q for _, q, _ in rows], c.batch_size)
                found = []
                for i, (_, q, _) in enumerate(rows):
                    hits = index.search(document_vectors(qe, i), SearchParams(k=c.rag_k, mode="hybrid"), q.text())
                    ctx = [by_id[h.id] for h in hits]
                    found.append((ctx, term_evidence(q.text(), [d.text() for d in ctx], [index]) or 0.0))
                prompts = [generation_prompt(q, fmt, ctx) for (_, q, _), (ctx, _) in zip(rows, found, strict=True)]
                margins = _margins(model, prompts, c.batch_size)
                out[group] = [(ctx, lex, m) for (ctx, lex), m in zip(found, margins, strict=True)]
            index.close()
        return out

    def world(self, thresholds: tuple[float | None, float | None] | None = None) -> dict:
        """Attributes, phrasing families (RAG and VQA) and abstention through hybrid retrieval,
        decided as the server decides (`thresholds`: (margin, evidence); default: the checkpoint's
        `abstain_threshold`, `abstain_evidence_threshold`; none: the model's own greedy answer)."""
        model, c = self.model, self.cfg
        fmt = model.config.prompts
        lm_t, lex_t = thresholds or (model.config.abstain_threshold, model.config.abstain_evidence_threshold)
        half = len(self.pools.houses) // 2
        items = self.world_items(self.pools.houses[half:], self._absent_houses()[half:])
        evidence = self._world_evidence(items)
        barred = {} if lm_t is None else {"bad_words_ids": [[abstain_token(model.backbone)]]}
        out: dict = {"abstain_threshold": lm_t, "abstain_evidence_threshold": lex_t}
        decided: dict[str, list[tuple[str, bool, bool]]] = {}  # group -> (key, right, abstained)
        for group, rows in items.items():
            ev = evidence[group]
            preds = _generate(model, [generation_prompt(q, fmt, ctx) for (_, q, _), (ctx, _, _) in
                                      zip(rows, ev, strict=True)], c.batch_size, **barred)
            res = []
            for (key, _, answer), (_, lex, m), pred in zip(rows, ev, preds, strict=True):
                abstained = abstains(m, lex, lm_t, lex_t) if lm_t is not None else _match(pred, ABSTAIN)
                right = abstained if answer == ABSTAIN else (not abstained and _match(pred, answer))
                res.append((key, right, abstained))
            decided[group] = res
        for group, name in (("attributes", "rag_attributes"), ("families", "rag_families")):
            per: dict[str, list[int]] = defaultdict(list)
            for key, right, _ in decided[group]:
                per[key].append(int(right))
            out[name] = {k: float(np.mean(v)) for k, v in per.items()}
        fam = out["rag_families"]
        fam["trained"] = float(np.mean([fam[f] for f in TRAINED]))
        fam["held_out"] = float(np.mean([fam[f] for f in HELD_OUT]))
        out["vqa_families"] = self._vqa_families()
        answerable = decided["attributes"] + decided["families"]
        per_out: dict[str, list[int]] = defaultdict(list)
        for key, right, _ in decided["outside"]:
            per_out[key].append(int(right))
        out["abstention"] = {**{k: float(np.mean(v)) for k, v in per_out.items()},
                             "outside": float(np.mean([r for _, r, _ in decided["outside"]])),
                             "false_abstention": float(np.mean([a for _, _, a in answerable]))}
        for attr in ATTRIBUTES:
            self._baseline(f"world.rag_attributes.{attr}", 1 / VQA_ANSWERS[attr] if attr != "count" else 1.0)
        return {"world": out}

    def _absent_houses(self):
        """Houses of the split's name distribution that no index of this evaluation holds."""
        from .world import knowledge_base

        n = len(self.pools.houses)
        offset = (SEEN_NAME_OFFSET if self.split == "seen" else 0) + n
        return knowledge_base(self.pools.split, n, offset)

    def _vqa_families(self) -> dict:
        """VQA accuracy by phrasing family over the split's scenes (the image with the question)."""
        p, c = self.pools, self.cfg
        rng = random.Random(f"{c.seed}:{self.split}:vqa-families")
        rows = []
        for sc in p.scenes[: max(1, c.n_vqa_per_type * 2)]:
            for family in FAMILIES:
                _, q, a = vqa_for(sc, rng, family)
                rows.append((family, Sample([*p.scene_sample(sc).slices, *text(q).slices]), a))
        fmt = self.model.config.prompts
        preds = _generate(self.model, [generation_prompt(s, fmt) for _, s, _ in rows], c.batch_size)
        per: dict[str, list[int]] = defaultdict(list)
        for (family, _, a), pred in zip(rows, preds, strict=True):
            per[family].append(int(_match(pred, a)))
        out = {k: float(np.mean(v)) for k, v in per.items()}
        out["trained"] = float(np.mean([out[f] for f in TRAINED]))
        out["held_out"] = float(np.mean([out[f] for f in HELD_OUT]))
        return out

    def calibrate_abstention(self) -> dict:
        """The two thresholds from the first half of the split's houses (and absent ones): the
        pair that abstains on the most questions the index cannot answer while abstaining on at
        most CALIBRATION_FALSE_ABSTENTION of the answerable ones (every attribute, every family)."""
        half = len(self.pools.houses) // 2
        items = self.world_items(self.pools.houses[:half], self._absent_houses()[:half])
        ev = self._world_evidence(items)
        inside = [(m, lex) for g in ("attributes", "families") for _, lex, m in ev[g]]
        outside = [(m, lex) for _, lex, m in ev["outside"]]
        lm_t, lex_t = calibrate_thresholds(inside, outside)

        def rate(rows):
            return float(np.mean([abstains(m, lex, lm_t, lex_t) for m, lex in rows]))

        return {"threshold": lm_t, "evidence_threshold": lex_t, "houses": half,
                "calibration_false_abstention": rate(inside), "calibration_abstention_outside": rate(outside)}

    # ----------------------------------------------------------- image tokens
    def image_tokens(self) -> dict:
        """What the LM is shown of an image (docs/EXPERIMENTS.md §9), over the split's scenes:
        `norm_ratio` (RMS of the image tokens / RMS of the text embeddings),
        `common_share` (share of their energy in the direction all tokens share: 1 means
        every token is the same vector) and `cos_between_images` (mean cosine between
        the same token position of two different scenes)."""
        backbone = self.model.backbone
        scenes = self.pools.scenes[:64]
        try:
            y = backbone.image_tokens([self.pools.image(sc) for sc in scenes]).float()  # [images, tokens, d]
        except NotImplementedError:
            return {}
        flat_y = y.reshape(-1, y.shape[-1])
        energy = float(flat_y.pow(2).sum(-1).mean())
        unit = torch.nn.functional.normalize(y, dim=-1)
        n = unit.shape[0]
        between = torch.einsum("atd,btd->ab", unit, unit) / unit.shape[1]
        off = ~torch.eye(n, dtype=torch.bool)
        return {"image_tokens": {
            "norm_ratio": float(flat_y.pow(2).mean().sqrt() / backbone.text_embedding_rms()),
            "common_share": float(flat_y.mean(0).pow(2).sum()) / energy,
            "cos_between_images": float(between[off].mean()) if n > 1 else 1.0,
        }}

    def run(self, fashion: bool = True) -> dict:
        out: dict = {}
        parts = [self.image_tokens, self.retrieval, self.minimal_pairs, self.vqa, self.rag, self.world]
        if fashion:
            parts.insert(3, self.fashion)
        for part in parts:
            logger.info("eval[%s]: %s", self.split, part.__name__)
            out.update(part())
        return out


def run_splits(model: SugarModel, cfg: EvalConfig | None = None) -> dict:
    """Held-out results at the top level, `seen` beside them, `baselines` for both.

    Fashion-MNIST has one official test split (all its classes are trained on):
    it is scored once and reported under both.
    """
    heldout = Evaluator(model, cfg, "heldout")
    results = heldout.run()
    seen = Evaluator(model, cfg, "seen")
    results["seen"] = seen.run(fashion=False)
    baselines = heldout.baselines
    baselines["seen"] = seen.baselines
    if "fashion_mnist" in results:
        results["seen"]["fashion_mnist"] = results["fashion_mnist"]
        baselines["seen"]["fashion_mnist"] = baselines["fashion_mnist"]
    results["baselines"] = baselines
    return results


def _query_from(scenes, rng: random.Random) -> Sample:
    from .world import interleaved_query

    return interleaved_query(scenes, rng)


def _contains_run(doc_caps: list[str], query_caps: list[str]) -> bool:
    n = len(query_caps)
    return any(doc_caps[i : i + n] == query_caps for i in range(len(doc_caps) - n + 1))


# ------------------------------------------------------------------ reporting


def flat(d: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        elif isinstance(v, (int, float)):
            out[key] = v
    return out


SUMMARY_KEYS = [
    "retrieval.r@1", "retrieval.r@5", "retrieval.r@10", "retrieval.mrr", "retrieval_cosine.r@1",
    "retrieval_raw_s.r@1", "minimal_pairs.overall", *[f"minimal_pairs.{a}" for a in ATTRIBUTES],
    "vqa.overall", *[f"vqa.{t}" for t in VQA_TYPES], "vqa_blank.overall",
    *[f"vqa_blank.{t}" for t in VQA_TYPES], "fashion_mnist.vqa", "fashion_mnist.retrieval.r@1",
    "rag.no_retrieval", "rag.own_retrieval", "rag.gold", "rag.retrieval_r@1",
    "rag.hybrid.own_retrieval", "rag.hybrid.retrieval_r@1",
    "image_tokens.norm_ratio", "image_tokens.common_share", "image_tokens.cos_between_images",
    *[f"world.rag_attributes.{a}" for a in ATTRIBUTES],
    *[f"world.rag_families.{f}" for f in (*FAMILIES, "trained", "held_out")],
    *[f"world.vqa_families.{f}" for f in (*FAMILIES, "trained", "held_out")],
    "world.abstention.absent_house", "world.abstention.unknown_question", "world.abstention.licence_text",
    "world.abstention.outside", "world.abstention.false_abstention", "world.abstain_threshold",
    "world.abstain_evidence_threshold",
]


def summary_table(results: dict) -> str:
    """metric | heldout | seen | chance | majority (baselines of the held-out split)."""
    f = flat({k: v for k, v in results.items() if k not in ("seen", "baselines")})
    fs = flat(results.get("seen", {}))
    fb = flat(results.get("baselines", {}))

    def cell(d: dict, k: str) -> str:
        return f"{d[k]:.3f}" if k in d else "-"

    lines = ["| metric | heldout | seen | chance | majority |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {cell(f, k)} | {cell(fs, k)} | {cell(fb, k + '.chance')} | "
              f"{cell(fb, k + '.majority')} |" for k in SUMMARY_KEYS if k in f or k in fs]
    for name, d in (("heldout", results), ("seen", results.get("seen", {}))):
        if "position_curve" in d:
            lines.append(f"| position_curve (k=5, by rank), {name} | "
                         + ", ".join(f"{v:.2f}" for v in d["position_curve"]) + " | | | |")
    return "\n".join(lines)


def write_report(results: dict, out_dir: Path, title: str = "Sugar evaluation") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "eval.md").write_text(f"# {title}\n\n{summary_table(results)}\n\n"
                                     "Plots: eval_bars.png, position_curve.png\n")
    plot_results(results, out_dir)


def plot_results(results: dict, out_dir: Path) -> None:
    """eval_bars.png (accuracies, retrieval, RAG; both splits, with majority/chance marks) and
    position_curve.png when measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = [("heldout", results), ("seen", results.get("seen", {}))]
    groups = [("minimal_pairs", "minimal-pair accuracy"), ("vqa", "VQA exact match"),
              ("vqa_blank", "VQA, image blanked")]
    fig, axes = plt.subplots(1, 5, figsize=(25, 3.8))
    baselines = results.get("baselines", {})
    for ax, (key, title) in zip(axes[:3], groups, strict=True):
        names = [k for k, v in results.get(key, {}).items() if isinstance(v, float)]
        majority = baselines.get(key, {})
        _split_bars(ax, names, [d.get(key, {}) for _, d in splits], splits,
                    [majority.get(n, {}).get("majority", majority.get(n, {}).get("chance", 0)) for n in names])
        ax.set_title(title)
    _retrieval_bars(axes[3], splits)
    rag_keys = ["no_retrieval", "own_retrieval", "hybrid.own_retrieval", "gold", "retrieval_r@1",
                "hybrid.retrieval_r@1"]
    fb = flat(baselines.get("rag", {}))
    _split_bars(axes[4], rag_keys, [flat(d.get("rag", {})) for _, d in splits], splits,
                [fb.get(f"{k}.majority", fb.get(f"{k}.chance", 0.0)) for k in rag_keys])
    axes[4].set_title("RAG (answers; gold-document R@1)")
    fig.tight_layout()
    fig.savefig(out_dir / "eval_bars.png", dpi=100)
    plt.close(fig)
    if "position_curve" in results:
        _position_curve(splits, out_dir / "position_curve.png")


def _split_bars(ax, names: list[str], values: list[dict], splits, marks: list[float]) -> None:
    """One bar per split and name, a black mark per name (majority or chance)."""
    for i, ((split, _), d) in enumerate(zip(splits, values, strict=True)):
        ax.bar([x + i * 0.4 for x in range(len(names))], [d.get(n, 0.0) for n in names], width=0.4, label=split)
    ax.scatter([x + 0.2 for x in range(len(names))], marks, color="k", marker="_", s=200,
               label="majority/chance", zorder=3)
    ax.set_xticks([x + 0.2 for x in range(len(names))], names, rotation=45)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)


def _retrieval_bars(ax, splits) -> None:
    ks = ["r@1", "r@5", "r@10", "mrr"]
    bars = [(f"{name} ({split})", d.get(name, {})) for split, d in splits
            for name in ("retrieval", "retrieval_cosine")]
    w = 0.8 / len(bars)
    for i, (label, d) in enumerate(bars):
        ax.bar([x + i * w for x in range(4)], [d.get(k, 0) for k in ks], width=w, label=label)
    ax.set_xticks([x + 0.4 - w / 2 for x in range(4)], ks)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title("interleaved retrieval")


def _position_curve(splits, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for split, d in splits:
        curve = d.get("position_curve")
        if curve:
            ax.plot(range(1, len(curve) + 1), curve, marker="o", label=split)
    ax.set_ylim(0, 1)
    ax.set_xlabel("rank of the relevant document")
    ax.set_ylabel("accuracy")
    ax.set_title("RAG position sensitivity (k=5)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(checkpoint: str | Path, out_dir: str | Path | None = None, cfg: EvalConfig | None = None,
             calibrate: bool = False) -> dict:
    """The evaluation; `calibrate`: first the abstention threshold on the held-out split's
    calibration half, written into the checkpoint's sugar_config.json (then evaluated with it)."""
    model = SugarModel.from_pretrained(checkpoint)
    calibration = None
    if calibrate:
        with torch.no_grad():
            calibration = Evaluator(model, cfg, "heldout").calibrate_abstention()
        model.config.abstain_threshold = calibration["threshold"]
        model.config.abstain_evidence_threshold = calibration["evidence_threshold"]
        from model.sugar import CONFIG_FILE

        model.config.save(Path(checkpoint) / CONFIG_FILE)
        logger.info("abstention thresholds %s written to %s", calibration, Path(checkpoint) / CONFIG_FILE)
    with torch.no_grad():
        results = run_splits(model, cfg)
    if calibration is not None:
        results["abstention_calibration"] = calibration
    results["checkpoint"] = str(checkpoint)
    write_report(results, Path(out_dir) if out_dir else Path(checkpoint) / "eval")
    return results
