"""`torchrun --nproc_per_node 2 -m explorer heal ...` (explorer/cli/heal.py, docs/scale.md): two gloo
ranks heal a tiny model as one process does. The closed form and the seeded layer-wise heal give
the one process's held-out figure (1e-4) and fitted tensors (1e-5), and rank 0 alone writes the
recipe; distill and tail-finetune, whose steps are split across the ranks with their gradients
added, give the one process's figure too (they would not if each rank took a step of its half
alone)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rank_launch import torchrun as launch

from explorer import cli

def torchrun(n: int, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node n -m explorer ARGS`."""
    return launch(n, "-m", "explorer", *args, timeout=timeout)


@pytest.fixture()
def base(tiny_factory, sample_text, tmp_path) -> list[str]:
    text = tmp_path / "heal.txt"
    text.write_text(sample_text)
    return ["heal", "--model", str(tiny_factory("llama", num_layers=6)), "--drop", "2,3",
            "--heal-text", str(text), "--heal-param", "seqlen=32", "--heal-param", "windows=12",
            "--heal-param", "held_out=2", "--json"]


def one_and_two(base: list[str], mode_args: list[str], tmp_path, capsys) -> tuple[dict, dict]:
    """The command's JSON from one process (in this one) and from 2 ranks; both write --out."""
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    one_dir.mkdir()
    two_dir.mkdir()
    capsys.readouterr()
    assert cli.main(base + mode_args + ["--out", str(one_dir / "r.json")]) == 0
    one = json.loads(capsys.readouterr().out)
    done = torchrun(2, base + mode_args + ["--out", str(two_dir / "r.json")])
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1                                  # rank 0 alone printed
    two = json.loads(lines[0])
    assert (one["ranks"], two["ranks"]) == (1, 2)
    return one, two


def max_diff(a: Path, b: Path, relative: bool) -> float:
    """The largest difference between two fitted-tensor files (relative: to each tensor's
    largest entry)."""
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys() and ta
    return max(float((ta[k] - tb[k]).abs().max() /
                     (ta[k].abs().max().clamp_min(1e-12) if relative else 1)) for k in ta)


@pytest.mark.parametrize("mode_args", [
    ["--mode", "closed-form"],
    ["--mode", "layerwise", "--heal-steps", "4", "--heal-param", "batch=4",
     "--heal-param", "keep_best=false"],
], ids=["closed-form", "layerwise"])
def test_two_ranks_heal_as_one_process(base, mode_args, tmp_path, capsys):
    one, two = one_and_two(base, mode_args, tmp_path, capsys)
    assert two["held_out_before"] == pytest.approx(one["held_out_before"], rel=1e-6)
    assert two["held_out_after"] == pytest.approx(one["held_out_after"], rel=1e-4)
    assert two["held_out_after"] != pytest.approx(two["held_out_before"], rel=1e-6)   # it healed
    assert two["healed_slots"] == one["healed_slots"] and two["steps"] == one["steps"]
    # one recipe and its tensors, written by rank 0 alone
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == \
        ["r.fitted.safetensors", "r.json"]
    recipe = json.loads((tmp_path / "two" / "r.json").read_text())
    assert recipe["ops"][-1]["op"] == "heal" and recipe["ops"][-1]["mode"] == mode_args[1]
    # the closed-form map relative to its size; trained weights (Adam's steps on float32
    # gradients added in another order) in absolute terms, as tests/test_core_ranks.py
    trained = mode_args[1] != "closed-form"
    assert max_diff(tmp_path / "one" / "r.fitted.safetensors",
                    tmp_path / "two" / "r.fitted.safetensors", relative=not trained) <= 1e-5


@pytest.mark.parametrize("mode_args", [
    ["--mode", "distill", "--heal-param", "init=none", "--heal-param", "lr=0.002"],
    ["--mode", "tail-finetune", "--heal-param", "k=2", "--heal-param", "lr=0.002"],
], ids=["distill", "tail-finetune"])
def test_two_ranks_distill_a_global_batch_as_one_process(base, mode_args, tmp_path, capsys):
    args = mode_args + ["--heal-steps", "4", "--heal-param", "batch=4",
                        "--heal-param", "keep_best=false"]
    one, two = one_and_two(base, args, tmp_path, capsys)
    assert two["held_out_after"] == pytest.approx(one["held_out_after"], rel=1e-4)
    assert abs(two["held_out_after"] - two["held_out_before"]) > 1e-3 * two["held_out_before"]
    assert max_diff(tmp_path / "one" / "r.fitted.safetensors",
                    tmp_path / "two" / "r.fitted.safetensors", relative=False) <= 1e-5


def test_heal_command_bad_input_is_one_line(base, capsys):
    assert cli.main(base) == 2
    assert "heal needs --mode" in capsys.readouterr().err
    assert cli.main([a for a in base if a not in ("--drop", "2,3")] + ["--mode", "closed-form"]) == 2
    assert "--drop LAYERS or --recipe FILE" in capsys.readouterr().err
    assert cli.main(base + ["--mode", "closed-form", "--out", "x.txt"]) == 2
    err = capsys.readouterr().err
    assert "ending in .json" in err and err.count("\n") == 1


def test_two_ranks_compress_and_heal_as_one_process(tiny_factory, sample_text, tmp_path, capsys):
    """`compress --heal` as 2 ranks (MKA, which merges by a similarity measure, and the closed form): the same layers
    removed, the one process's healed figures (1e-4) and exported weights (1e-5 of each tensor's
    size), and one export, rank 0's."""
    text = tmp_path / "text.txt"
    text.write_text(sample_text)
    args = ["compress", "--model", str(tiny_factory("llama", num_layers=6)), "--method",
            "mka", "--remove", "2", "--text", str(text), "--calib-seqlen", "32",
            "--calib-samples", "6", "--seqlen", "32", "--max-tokens", "320",
            "--heal", "closed-form", "--heal-text", str(text), "--heal-param", "seqlen=32",
            "--heal-param", "windows=12", "--heal-param", "held_out=2", "--json"]
    capsys.readouterr()
    assert cli.main(args + ["--out", str(tmp_path / "one")]) == 0
    one = json.loads(capsys.readouterr().out)
    done = torchrun(2, args + ["--out", str(tmp_path / "two")])
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1                                  # rank 0 alone printed
    two = json.loads(lines[0])
    assert two["removed"] == one["removed"] and len(one["removed"]) == 2
    assert two["ppl_after"] == pytest.approx(one["ppl_after"], rel=1e-9)
    for key in ("held_out_before", "held_out_after"):
        assert two["heal"][key] == pytest.approx(one["heal"][key], rel=1e-4), key
    assert two["heal"]["held_out_after"] != pytest.approx(two["heal"]["held_out_before"],
                                                          rel=1e-6)          # it healed
    assert two["ppl_healed"] == pytest.approx(one["ppl_healed"], rel=1e-4)
    assert two["out_of_domain"]["ppl_healed"] == pytest.approx(
        one["out_of_domain"]["ppl_healed"], rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one").iterdir())
    shards = sorted(p.name for p in (tmp_path / "one").glob("*.safetensors"))
    assert shards
    for name in shards:
        assert max_diff(tmp_path / "one" / name, tmp_path / "two" / name, relative=True) <= 1e-5
