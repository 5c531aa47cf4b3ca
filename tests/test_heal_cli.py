"""`compress ... --heal MODE` on a tiny model folder: ppl_healed, the out-of-domain figure, an
export that reloads with plain transformers to the same perplexity, its recipe; one-line errors."""

from __future__ import annotations

import io
import json

import pytest
import torch

from explorer import cli, load_model, load_texts, perplexity
from explorer.export.folder import RECIPE_FILE


@pytest.fixture()
def common(tiny_factory, sample_text, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(sample_text)
    return ["--model", str(tiny_factory("llama", num_layers=6)), "--text", str(text),
            "--seqlen", "32", "--max-tokens", "256", "--calib-seqlen", "32",
            "--calib-samples", "4", "--json"]


def test_compress_heal_json_export_and_recipe(common, tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM

    dest = tmp_path / "healed"
    assert cli.main(["compress", "--method", "drop", "--param", "layers=2,3", "--heal",
                     "layerwise", "--heal-steps", "3", "--heal-param", "windows=9",
                     "--heal-param", "seqlen=32", "--heal-param", "held_out=2", "--heal-param", "keep_best=false", "--out",
                     str(dest), *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["heal"]["mode"] == "layerwise" and out["heal"]["steps"] == 3
    assert out["heal"]["params"]["windows"] == 9 and out["num_layers"] == 4
    assert out["ppl_healed"] > 1 and out["ppl_healed"] != out["ppl_after"]
    ood = out["out_of_domain"]
    assert ood["text"] == "wiki" and ood["ppl_healed"] > 1 and "windows of 32" in ood["protocol"]
    recipe = json.loads((dest / RECIPE_FILE).read_text())
    assert recipe["ops"][-1]["op"] == "heal" and recipe["results"]["ppl_healed"] == \
        out["ppl_healed"]
    # the folder loads with transformers alone, and gives the healed model's perplexity
    assert type(AutoModelForCausalLM.from_pretrained(dest)).__name__ == "LlamaForCausalLM"
    again = load_model(str(dest))
    text = load_texts(common[3]).evaluation
    ppl = perplexity(again, text, seqlen=32, max_tokens=256).ppl
    assert ppl == pytest.approx(out["ppl_healed"], rel=1e-4)
    # the recipe is self-contained: `export --recipe` in a fresh state (nothing in memory) loads
    # the healed layers from the tensors beside it, trains nothing, and writes the same weights
    from safetensors.torch import load_file

    from explorer.apply import fitted
    from explorer.heal import registry as heal_registry

    assert (dest / "layer_explorer_recipe.fitted.safetensors").is_file()
    fitted.RESULTS.clear()
    capsys.readouterr()

    def no_training(*a, **k):
        raise AssertionError("export --recipe trained")
    monkeypatch.setattr(heal_registry, "heal", no_training)
    assert cli.main(["export", "--model", common[1], "--recipe", str(dest / RECIPE_FILE),
                     "--out", str(tmp_path / "again"), "--json"]) == 0
    assert "fitting it again" not in capsys.readouterr().err
    a, b = load_file(dest / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra,match", [
    (["--heal", "nope"], "error: unknown heal mode 'nope'"),
    (["--heal", "distill", "--heal-steps", "0"], "error: heal steps must be a positive"),
    (["--heal-steps", "5"], "error: --heal-steps, --heal-seconds, --heal-param and --heal-text "
                            "need --heal"),
    (["--heal", "closed-form", "--heal-text", "nowhere/missing.txt"], "error: "),
    (["--heal", "tail-finetune", "--heal-param", "k=0"], "error: heal mode 'tail-finetune': k "),
    (["--heal", "closed-form", "--heal-seconds", "30"], "error: heal mode 'closed-form' trains"),
    (["--heal", "layerwise", "--heal-param", "lr=fast"], "error: heal mode 'layerwise': lr must"),
])
def test_heal_option_errors_are_one_line(common, extra, match):
    code = cli.main(["compress", "--method", "drop", "--param", "layers=2", *extra, *common],
                    stderr=(errors := io.StringIO()))
    err = errors.getvalue()
    assert code == 2 and err.startswith(match) and err.count("\n") == 1


def test_empty_healing_text_file_is_one_line(common, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    code = cli.main(["compress", "--method", "drop", "--param", "layers=2", "--heal",
                     "closed-form", "--heal-text", str(empty), *common],
                    stderr=(errors := io.StringIO()))
    err = errors.getvalue()
    assert code == 2 and "empty" in err and err.count("\n") == 1
