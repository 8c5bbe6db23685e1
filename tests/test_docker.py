"""The deployment files: compose structure (validated by docker-compose and hadolint in .ci/run)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_wires_api_to_vllm_with_volumes_and_healthchecks():
    c = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    s = c["services"]
    assert {"api", "vllm", "api-cpu", "train"} <= s.keys()
    api, vllm = s["api"], s["vllm"]
    assert api["environment"]["SUGAR_ENGINE"] == "vllm"
    assert api["environment"]["SUGAR_VLLM_URL"] == "http://vllm:8000"  # the compose network
    assert "/ready" in " ".join(api["healthcheck"]["test"])
    assert any("/backbone" in a for a in vllm["command"])  # vLLM serves CKPT/backbone
    assert {"checkpoints", "index", "cache"} <= c["volumes"].keys()
    assert s["api-cpu"]["profiles"] == ["cpu"] and s["api-cpu"]["environment"]["SUGAR_ENGINE"] == "hf"
    assert s["train"]["profiles"] == ["train"] and s["train"]["command"][0] == "train"


def test_compose_embeds_through_a_vllm_pooling_runner_of_the_same_backbone():
    c = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    s = c["services"]
    api, gen, emb = s["api"], s["vllm"], s["vllm-embed"]
    assert api["environment"]["SUGAR_VLLM_EMBED_URL"] == "http://vllm-embed:8000"
    assert api["depends_on"]["vllm-embed"]["condition"] == "service_healthy"
    def model_flags(service):
        return [a for a in service["command"] if a.startswith("--model")]

    assert model_flags(emb) == model_flags(gen)
    flags = " ".join(emb["command"])
    assert "--runner=pooling" in flags and "--convert=embed" in flags and '"task": "token_embed"' in flags
    for svc in (gen, emb):  # the checkpoint's own PIL image processor in vLLM too
        assert '--mm-processor-kwargs={"use_fast": false}' in svc["command"]


def test_compose_shared_profile_runs_replicas_on_one_postgres_index():
    c = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    s = c["services"]
    pg, api = s["postgres"], s["api-shared"]
    assert pg["profiles"] == api["profiles"] == ["shared"] and pg["image"].startswith("pgvector/pgvector:")
    assert api["environment"]["SUGAR_INDEX_URL"].startswith("postgresql://sugar:")
    assert api["environment"]["SUGAR_INDEX_URL"].endswith("@postgres:5432/sugar")
    assert "SUGAR_INDEX" not in api["environment"]  # a directory and a URL at once is refused
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "replicas" in api["deploy"] and "pgdata" in c["volumes"]


def test_images_run_as_non_root_without_weights():
    for name in ("Dockerfile", "Dockerfile.gpu"):
        text = (ROOT / "docker" / name).read_text()
        assert "USER 10001" in text and "HEALTHCHECK" in text and "/ready" in text
        assert "checkpoints" not in text.split("HEALTHCHECK")[0]  # no weights baked in


def test_env_example_documents_every_compose_variable():
    compose = (ROOT / "docker" / "docker-compose.yml").read_text()
    env = (ROOT / "docker" / ".env.example").read_text()
    import re

    used = set(re.findall(r"\$\{([A-Z_]+)", compose))
    documented = set(re.findall(r"^([A-Z_]+)=", env, re.M))
    assert used <= documented, sorted(used - documented)
