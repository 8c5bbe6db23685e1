"""Abstention (issue #30): a checkpoint with `abstain_threshold` answers "not in the documents"
when the first answer token's margin for it reaches the threshold, with documents in the
context and a text-only question; below it the token is barred from decoding. Tested at the two
extremes of the threshold (always / never), on /generate, chat and their streams; the
calibration against its reference; the margin against a hand computation."""

from __future__ import annotations

import inspect
import json
import shutil

import pytest
import torch
from fastapi.testclient import TestClient

from model.prompts import ABSTAIN_ANSWER
from model.sugar import abstain_margin
from server.app import create_app
from tests.server_fixtures import b64_image, seed_index, settings_for

Q = {"slices": [{"type": "text", "text": "What colour is the banner of House H1?"}]}


def _client(tiny_ckpt, tmp_path, threshold, evidence=None):
    ck = tmp_path / "ck"
    shutil.copytree(tiny_ckpt, ck)
    cfg = json.loads((ck / "sugar_config.json").read_text())
    cfg["abstain_threshold"] = threshold
    if evidence is not None:
        cfg["abstain_evidence_threshold"] = evidence
    (ck / "sugar_config.json").write_text(json.dumps(cfg))
    seed_index(tmp_path / "ix", ck, n=4)
    return TestClient(create_app(settings_for(ck, tmp_path / "ix", max_tokens_limit=16, default_max_tokens=6)))


def test_margin_is_the_log_probability_gap():
    logits = torch.tensor([[2.0, 0.5, 1.0], [0.0, 3.0, 0.0]])
    lp = torch.log_softmax(logits, -1)
    got = abstain_margin(logits, 1)
    assert torch.allclose(got, torch.tensor([lp[0, 1] - lp[0, 0], lp[1, 1] - lp[1, 0]]))


def test_always_abstaining_checkpoint(tiny_ckpt, tmp_path):
    with _client(tiny_ckpt, tmp_path, -1e9) as c:
        r = c.post("/generate", json={"query": Q}).json()
        assert r["abstained"] is True and r["finish_reason"] == "abstained" and r["text"] == ABSTAIN_ANSWER
        assert r["documents"] and r["usage"]["completion_tokens"] == 0
        with c.stream("POST", "/generate", json={"query": Q, "stream": True}) as s:
            events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: ")]
        assert "".join(e.get("delta", "") for e in events) == ABSTAIN_ANSWER and events[-1]["abstained"]
        chat = {"model": "sugar", "messages": [{"role": "user", "content": Q["slices"][0]["text"]}]}
        r = c.post("/v1/chat/completions", json=chat).json()
        assert r["abstained"] is True and r["choices"][0]["message"]["content"] == ABSTAIN_ANSWER
        assert r["choices"][0]["finish_reason"] == "stop"  # OpenAI clients see a normal stop
        with c.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as s:
            chunks = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
        assert "".join(ch["choices"][0]["delta"].get("content", "") for ch in chunks if ch["choices"]) == ABSTAIN_ANSWER
        assert [ch.get("abstained") for ch in chunks if ch["choices"] and ch["choices"][0]["finish_reason"]] == [True]
        # no documents, or an image in the question: nothing to abstain from
        r = c.post("/generate", json={"query": Q, "retrieval": {"enabled": False}}).json()
        assert r["abstained"] is False and r["finish_reason"] != "abstained"
        img = {"slices": [Q["slices"][0], {"type": "image", "base64": b64_image(2)}]}
        assert c.post("/generate", json={"query": img}).json()["abstained"] is False


def test_never_abstaining_checkpoint_bars_the_abstention_token(tiny_ckpt, tmp_path, monkeypatch):
    from server.engine import HFEngine

    seen = {}
    real = HFEngine._run

    def spy(self, *a, **kw):
        res = real(self, *a, **kw)
        seen["abstain"] = a[6] if len(a) > 6 else kw.get("abstain")
        return res

    monkeypatch.setattr(HFEngine, "_run", spy)
    with _client(tiny_ckpt, tmp_path, 1e9) as c:
        r = c.post("/generate", json={"query": Q}).json()
    assert r["abstained"] is False and not r["text"].startswith("not")
    assert seen["abstain"] is not None and seen["abstain"].threshold == 1e9


@pytest.mark.parametrize("target", [0.0, 0.03, 0.2])
def test_calibrated_threshold_abstains_on_at_most_the_target_share(target):
    import random

    from training.evaluate import calibrate_threshold

    rng = random.Random(0)
    margins = [rng.gauss(-3, 2) for _ in range(500)]
    t = calibrate_threshold(margins, target)
    share = sum(m >= t for m in margins) / len(margins)
    assert share <= target
    lower = t - 1e-3  # no lower threshold keeps within the target: it is the lowest
    assert sum(m >= min(lower, max(margins)) for m in margins) / len(margins) > target or t == float("-inf")


def test_word_evidence_abstains_without_asking_the_model(tiny_ckpt, tmp_path, monkeypatch):
    """`abstain_evidence_threshold`: with hybrid (or lexical) retrieval, documents that hold none
    of the question's rarer words (index.index.term_evidence below it) are abstained from before
    decoding; a dense retrieval scores no words, so the rule does not apply. The four houses'
    documents hold "h1" of the question about House H1 (one document: evidence 1.0); of the
    question about House H9 only "the", "banner", "of" and "house", which all four hold (0.09)."""
    from server.engine import HFEngine

    forced = []
    real = HFEngine._run
    sig = inspect.signature(real)

    def run(self, *a, **kw):
        forced.append(sig.bind(self, *a, **kw).arguments["abstain"].forced)
        return real(self, *a, **kw)

    monkeypatch.setattr(HFEngine, "_run", run)
    absent = {"slices": [{"type": "text", "text": "What colour is the banner of House H9?"}]}
    with _client(tiny_ckpt, tmp_path, None, evidence=0.5) as c:
        r = c.post("/generate", json={"query": absent}).json()
        assert r["abstained"] is True and r["text"] == ABSTAIN_ANSWER and r["finish_reason"] == "abstained"
        assert r["usage"]["completion_tokens"] == 0 and forced == [True]  # decided before decoding
        r = c.post("/generate", json={"query": Q}).json()
        assert r["abstained"] is False and forced == [True, False]  # the name is there: the model answers
        dense = c.post("/generate", json={"query": absent, "retrieval": {"mode": "dense"}}).json()
        assert dense["abstained"] is False
        lexical = c.post("/generate", json={"query": absent, "retrieval": {"mode": "lexical"}}).json()
        assert lexical["abstained"] is True
        chat = {"model": "sugar", "messages": [{"role": "user", "content": absent["slices"][0]["text"]}]}
        assert c.post("/v1/chat/completions", json=chat).json()["abstained"] is True


def test_calibrated_pair_of_thresholds_catches_what_either_signal_sees():
    from training.evaluate import abstains, calibrate_thresholds

    # answerable: low margins, words found; outside: half say it by margin, half by missing words
    inside = [(-5.0 + 0.01 * i, 5.0 + 0.01 * i) for i in range(200)]
    outside = [(2.0, 6.0)] * 50 + [(-6.0, 0.1)] * 50
    lm_t, lex_t = calibrate_thresholds(inside, outside, target=0.02)
    assert sum(abstains(m, lex, lm_t, lex_t) for m, lex in inside) <= 4
    assert all(abstains(m, lex, lm_t, lex_t) for m, lex in outside)


def test_the_evidence_threshold_lies_midway_in_the_gap_it_was_calibrated_on():
    """Every answerable question's documents hold a one-document word (evidence 1.0), the
    absent houses' only common words (0.2): the threshold falls midway (0.6), not at 1.0, where
    a name that a second document also holds would abstain."""
    from training.evaluate import abstains, calibrate_thresholds

    inside = [(-5.0, 1.0)] * 100
    outside = [(-5.0, 0.2)] * 40 + [(-5.0, 1.0)] * 10
    lm_t, ev_t = calibrate_thresholds(inside, outside, target=0.03)
    assert ev_t == pytest.approx(0.6)
    assert not any(abstains(m, e, lm_t, ev_t) for m, e in inside)
    assert sum(abstains(m, e, lm_t, ev_t) for m, e in outside) == 40
