"""lm-evaluation-harness on a variant: a local multiple-choice task built here, run through our
command and through lm-eval's own `simple_evaluate` on the same weights (loaded by lm-eval from a
folder), offline; bad task input is one line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from explorer import cli, export, load_model, load_texts
from explorer.evaluate.capability import cloze_items, multiple_choice
from explorer.evaluate.task_index import TaskError, write_local_task
from explorer.evaluate.tasks import evaluate_tasks
from explorer.core.variant import Variant

pytest.importorskip("lm_eval")


def write_task(folder: Path, name: str, num_items: int, context_chars: int | None = None) -> Path:
    """A local lm-eval task: last-word multiple choice (one right word, three others) from the
    bundled held-out Wikipedia text, as lm-eval's own YAML + JSONL task format."""
    items = multiple_choice(cloze_items(load_texts("wiki").evaluation, num_items))
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for it in items:
            if context_chars:
                it = dict(it, context=it["context"][-context_chars:])
            f.write(json.dumps(it) + "\n")
    yaml = folder / f"{name}.yaml"
    yaml.write_text(f"""task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
""", encoding="utf-8")
    return yaml


def lm_eval_reference(folder: Path, yaml: Path, task: str, limit: int) -> dict:
    """lm-eval's own path: its HF model class loads the folder itself, its CLI's entry point runs."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    res = simple_evaluate(model="hf", model_args={"pretrained": str(folder), "dtype": "float32"},
                          tasks=[task], limit=limit, batch_size=8, device="cpu", log_samples=False,
                          task_manager=TaskManager(include_path=str(yaml.parent),
                                                   include_defaults=False))
    return res["results"][task]


def metric(report: dict, task: str, name: str, key: str) -> float:
    row = next(t for t in report["tasks"] if t["task"] == task)
    return next(m[key] for m in row["metrics"] if m["metric"] == name)


def test_command_matches_lm_eval_dense_and_variant(tiny_factory, sample_text, tmp_path, capsys):
    folder = tiny_factory("llama", num_layers=4)
    yaml = write_task(tmp_path / "task", "cloze_tiny", 24, context_chars=160)
    text = tmp_path / "text.txt"
    text.write_text(sample_text)
    assert cli.main(["eval", "--model", str(folder), "--text", str(text), "--seqlen", "64",
                     "--max-tokens", "256", "--drop", "1", "--tasks", str(yaml), "--limit", "20",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["tasks"]
    assert out["limit"] == 20 and out["tasks"][0]["samples"] == 20
    assert out["dense"]["num_layers"] == 4 and out["compressed"]["num_layers"] == 3

    # The same weights through lm-eval alone: the dense folder, and the variant exported.
    dense_ref = lm_eval_reference(folder, yaml, "cloze_tiny", 20)
    dropped = export(Variant.identity(load_model(str(folder))).drop([1]), tmp_path / "drop1")
    drop_ref = lm_eval_reference(dropped, yaml, "cloze_tiny", 20)
    for name in ("acc", "acc_norm"):
        assert metric(out, "cloze_tiny", name, "dense") == pytest.approx(
            dense_ref[f"{name},none"], abs=1e-9)
        assert metric(out, "cloze_tiny", name, "dense_stderr") == pytest.approx(
            dense_ref[f"{name}_stderr,none"], abs=1e-9)
        assert metric(out, "cloze_tiny", name, "compressed") == pytest.approx(
            drop_ref[f"{name},none"], abs=1e-9)

    # The library's own task writer gives lm-eval the same task.
    rows = [json.loads(line) for line in yaml.with_suffix(".jsonl").read_text().splitlines()]
    ours = write_local_task(tmp_path / "ours", "cloze_ours", rows)
    again = evaluate_tasks(load_model(str(folder)), [str(ours)], limit=20).to_dict()
    assert "compressed" not in again and metric(again, "cloze_ours", "acc", "dense") == \
        pytest.approx(dense_ref["acc,none"], abs=1e-9)


@pytest.mark.slow
def test_real_model_accuracy_and_a_broken_variant(smol, tmp_path):
    """SmolLM2 picks the right last word far above chance (1/4); lm-eval loading the same
    converted folder agrees; dropping its last layer (perplexity ~760) costs accuracy."""
    yaml = write_task(tmp_path / "task", "cloze_smol", 40)
    steps = []
    report = evaluate_tasks(smol, [str(yaml)], variant=Variant.identity(smol).drop([29]),
                            limit=40, progress=lambda e: steps.append(e.fraction)).to_dict()
    dense = metric(report, "cloze_smol", "acc", "dense")
    broken = metric(report, "cloze_smol", "acc", "compressed")
    assert dense == pytest.approx(lm_eval_reference(Path(smol.source), yaml, "cloze_smol",
                                                    40)["acc,none"], abs=1e-9)
    assert dense > 0.5 and broken < dense - 0.1, (dense, broken)
    assert steps == sorted(steps) and steps[-1] == 1.0


def test_bad_task_input_is_one_line(tiny_factory, tmp_path):
    folder = str(tiny_factory("llama", num_layers=4))
    yaml = write_task(tmp_path / "task", "cloze_bad", 8, context_chars=80)
    cases = [
        (["--tasks", "arc_eazy"], "unknown lm-eval task 'arc_eazy'; did you mean arc_easy"),
        (["--tasks", "arc_easy"], "needs its data set 'allenai/ai2_arc' from the Hugging Face hub"),
        (["--tasks", str(yaml), "--limit", "0"], "--limit must be a positive number"),
        (["--tasks", str(tmp_path / "missing.yaml")], "does not exist"),
        (["--limit", "5"], "--limit needs --tasks"),
    ]
    for extra, expected in cases:
        errors = io.StringIO()
        assert cli.main(["eval", "--model", folder, *extra, "--json"], stderr=errors) == 2
        line = errors.getvalue()
        assert line.count("\n") == 1 and line.startswith("error: ") and expected in line, line
    with pytest.raises(TaskError, match="positive"):
        evaluate_tasks(load_model(folder), [str(yaml)], limit=-3)
