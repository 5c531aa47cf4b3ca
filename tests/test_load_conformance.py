"""The conformance suite (tests/conformance.py) over every family transformers builds: every
family is checked or excluded with a reason, no family that loads gives a wrong figure, the
issue's 47 families reach the target, and docs/architectures.md is what the suite gives."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import conformance
import families

DOC = Path(__file__).parent.parent / "docs" / "architectures.md"

# The 47 families of issue 29 (those it found supported, refused, or wrong).
ISSUE_FAMILIES = (
    "llama", "mistral", "mixtral", "qwen2", "qwen3", "olmo", "olmo2", "smollm3", "granite",
    "cohere", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2", "gpt_neox",
    "qwen2_moe", "qwen3_moe", "granitemoe", "deepseek_v3", "glm", "glm4", "phi", "cohere2",
    "stablelm", "starcoder2", "gptj", "falcon", "exaone4", "hunyuan_v1_dense", "ernie4_5",
    "apertus", "seed_oss", "olmo3", "bloom", "opt", "gpt_bigcode", "internlm3", "ministral",
    "helium", "arcee", "vaultgemma", "lfm2", "falcon_h1", "jamba", "qwen3_next", "mamba")


@pytest.fixture(scope="module")
def rows() -> dict[str, conformance.Row]:
    return {r.family: r for r in conformance.run()}


def test_every_family_is_checked_or_excluded_with_a_reason():
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    assert set(families.INCLUDED) | set(families.EXCLUDED) == set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    assert not set(families.INCLUDED) & set(families.EXCLUDED)
    assert all(why.strip() for why in families.EXCLUDED.values())
    assert set(ISSUE_FAMILIES) <= set(families.INCLUDED)


def test_no_family_that_loads_gives_a_wrong_figure(rows):
    """A family either fails its self-check at load (one line) or its perplexity is the plain
    loop's and its hidden states are the model's own: no silently wrong figure."""
    wrong = {f: r.results for f, r in rows.items() if r.status("load") == "pass" and (
        r.status("eval") != "pass" or "differs" in r.results.get("similarity", ""))}
    assert not wrong, wrong
    assert all(r.status("load") in ("pass", "refused") for r in rows.values())


def test_the_issue_families_reach_the_target(rows):
    passing = [f for f in ISSUE_FAMILIES if rows[f].passes]
    assert len(passing) >= 42, sorted(set(ISSUE_FAMILIES) - set(passing))


def test_no_export_writes_what_it_cannot_reload(rows):
    """drop + export either reloads with the manual drop's logits or refuses in one line."""
    bad = {f: r.results["drop_export"] for f, r in rows.items()
           if r.status("drop_export") == "FAIL"}
    assert not bad, bad


def _doc_statuses(text: str) -> dict[str, list[str]]:
    out = {}
    for line in text.splitlines():
        m = re.match(r"\| (\S+) \| [^|]+ \|(.*)\|$", line)
        if m and m.group(1) not in ("family", "---"):
            out[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return out


def test_the_support_matrix_is_what_the_suite_gives(rows):
    """docs/architectures.md is generated (python tests/conformance.py --write ...), never
    written by hand: its table must be this run's statuses (the reasons' figures may differ in
    the last digits between CPUs, so only the statuses are compared)."""
    want = _doc_statuses(conformance.matrix(list(rows.values())))
    have = _doc_statuses(DOC.read_text())
    assert have == want, "regenerate: python tests/conformance.py --write docs/architectures.md"
