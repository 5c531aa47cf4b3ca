"""`python -m explorer compress` on a tiny model folder prints one JSON object and exports."""

import io
import json

import pytest
import torch

from explorer import cli, load_model
from explorer.export.folder import RECIPE_FILE


def test_compress_json_and_export(tiny_factory, sample_text, tmp_path, capsys):
    folder = tiny_factory("llama", num_layers=6)
    text = tmp_path / "text.txt"
    text.write_text(sample_text)
    common = ["--model", str(folder), "--text", str(text), "--seqlen", "32", "--max-tokens",
              "256", "--calib-seqlen", "32", "--calib-samples", "4", "--json"]
    assert cli.main(["compress", "--method", "laco", "--remove", "2", "--param", "C=3",
                     "--param", "T=-1", "--param", "rule=code", *common]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("method", "ppl_before", "ppl_after", "removed", "merged", "num_layers", "params",
                "protocol"):
        assert key in out
    assert out["method"] == "laco" and out["num_layers"] == 4 and len(out["removed"]) == 2
    assert out["params"]["C"] == 3 and out["params"]["T"] == -1 and out["params"]["rule"] == "code"
    assert out["ppl_after"] > 1 and "windows of 32 tokens" in out["protocol"]

    dest = tmp_path / "exported"
    assert cli.main(["compress", "--method", "come", "--remove", "1", "--out", str(dest),
                     *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["out"] == str(dest) and load_model(str(dest)).num_layers == 5
    recipe = json.loads((dest / RECIPE_FILE).read_text())
    assert recipe["method"] == "come" and recipe["results"]["ppl_after"] == out["ppl_after"]


def test_compress_errors_are_one_line(tiny_factory, sample_text, tmp_path, capsys):
    folder = tiny_factory("llama", num_layers=6)
    text = tmp_path / "text.txt"
    text.write_text(sample_text)
    code = cli.main(["compress", "--model", str(folder), "--text", str(text), "--method", "nope",
                     "--remove", "1", "--json"], stderr=(errors := io.StringIO()))
    err = errors.getvalue()
    assert code == 2 and err.startswith("error: unknown method 'nope'") and err.count("\n") == 1


@pytest.mark.slow
def test_recipe_with_a_fitted_op_exports_in_a_fresh_process(tiny_factory, tmp_path):
    """`export --recipe` replays streamline's op although that process never imported the methods
    itself (its replay handler used to be registered only by importing explorer.plan)."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    folder = str(tiny_factory("llama", num_layers=6))
    d, e = tmp_path / "d", tmp_path / "e"
    run = dict(capture_output=True, text=True, timeout=300)
    proc = subprocess.run([sys.executable, "-m", "explorer", "compress", "--model", folder,
                           "--method", "streamline", "--remove", "2", "--param", "steps=3",
                           "--text", "wiki", "--calib-seqlen", "32", "--calib-samples", "4",
                           "--seqlen", "32", "--max-tokens", "64", "--out", str(d), "--json"],
                          **run)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "explorer", "export", "--model", folder,
                           "--recipe", str(d / RECIPE_FILE), "--out", str(e), "--json"], **run)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["num_layers"] == 4
    # the replayed fit is the planned one: same weights, tensor for tensor
    a, b = load_file(str(d / "model.safetensors")), load_file(str(e / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_laco_asked_for_six_removes_six_or_says_why(tiny_factory, sample_text, tmp_path, capsys):
    folder = tiny_factory("llama", num_layers=8)
    text = tmp_path / "text.txt"
    text.write_text(sample_text)
    common = ["--model", str(folder), "--text", str(text), "--seqlen", "32", "--max-tokens",
              "128", "--calib-seqlen", "32", "--calib-samples", "4", "--method", "laco",
              "--remove", "6", "--json"]
    assert cli.main(["compress", *common]) == 0                      # target mode (default)
    out = json.loads(capsys.readouterr().out)
    assert out["num_layers"] == 2 and len(out["removed"]) == 6
    assert out["params"]["mode"] == "target" and "removing 6 layers" in out["notes"]
    # the paper's walk with a threshold nothing passes: non-zero exit and the reason in one line
    errors = io.StringIO()
    code = cli.main(["compress", *common, "--param", "mode=walk", "--param", "T=1"],
                    stderr=errors)
    err = errors.getvalue()
    assert code == 2 and err.count("\n") == 1 and capsys.readouterr().out == ""
    assert err.startswith("error: LaCo: the paper's walk (7 layers per merge) ended after "
                          "removing 0 of 6 layers: accepted 0 of ")
