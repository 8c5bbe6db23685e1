"""What a training run is made of: the model (tiny or HF backbone, LoRA) and the teachers
(cached, checked on minimal pairs, weight 0 when blind)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from model.families import load_backbone
from model.prompts import chat_template
from model.sugar import SugarModel, with_family_prompts
from model.teachers import CachedTeacher, TripleKernel, load_teacher

from .config import TrainConfig
from .data import MinimalPair

logger = logging.getLogger(__name__)


def build_model(cfg: TrainConfig, corpus: list[str]) -> SugarModel:
    """The model a run starts from: a warm start (`init`), a tiny random base of `tiny.family`,
    or a Hugging Face directory of any registered family (`backbone`: `sugar train --base`),
    whose chat template becomes the Sugar prompt format's (so vLLM renders what training saw)."""
    sugar_cfg = cfg.sugar
    if cfg.init:  # a warm start: the checkpoint's backbone, heads and config as saved
        model = SugarModel.from_pretrained(cfg.init)
        if cfg.context_order:
            model.config.prompts.context_order = cfg.context_order
        if cfg.tokenizer_words:
            model.backbone.keep_words_whole(cfg.tokenizer_words, cfg.tokenizer_words_init)
        if cfg.lora_rank > 0:
            apply_lora(model, cfg)
        return model
    if cfg.context_order:
        sugar_cfg = dataclasses.replace(sugar_cfg, prompts=dataclasses.replace(
            sugar_cfg.prompts, context_order=cfg.context_order))
    if cfg.backbone == "tiny":
        from model.tiny import build_tiny

        sugar_cfg = with_family_prompts(sugar_cfg, cfg.tiny.family)
        tiny = dataclasses.replace(cfg.tiny, seed=cfg.seed)
        backbone = build_tiny(tiny, corpus=corpus, fmt=sugar_cfg.prompts)
    else:
        backbone = load_backbone(cfg.backbone)
        logger.info("base %s: the %s family, %.1fM parameters", cfg.backbone, backbone.family,
                    sum(p.numel() for p in backbone.parameters()) / 1e6)
        sugar_cfg = with_family_prompts(sugar_cfg, backbone.family)
        backbone.set_chat_template(chat_template(sugar_cfg.prompts, backbone.eos_token))
    if cfg.tokenizer_words:
        backbone.keep_words_whole(cfg.tokenizer_words, cfg.tokenizer_words_init)
    torch.manual_seed(cfg.seed)
    model = SugarModel(backbone, sugar_cfg)
    if cfg.lora_rank > 0:
        apply_lora(model, cfg)
    return model


def apply_lora(model: SugarModel, cfg: TrainConfig) -> None:
    """LoRA adapters on the family's decoder (`lora_targets`, default: the family's attention
    projections); everything else of the backbone frozen; the heads fully trained."""
    from peft import LoraConfig, inject_adapter_in_model

    for p in model.vlm.parameters():
        p.requires_grad_(False)
    targets = list(cfg.lora_targets or model.backbone.lora_targets)
    config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=targets, lora_dropout=0.0)
    inject_adapter_in_model(config, model.backbone.decoder())
    for n, p in model.vlm.named_parameters():
        if "lora_" in n:
            p.requires_grad_(True)


def merge_lora(model: SugarModel) -> None:
    """Fold LoRA weights into the base layers so backbone/ is a plain HF model."""
    from peft.tuners.lora import LoraLayer

    lm = model.backbone.decoder()
    for name, module in list(lm.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = lm.get_submodule(parent_name) if parent_name else lm
            setattr(parent, child, module.get_base_layer())


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
