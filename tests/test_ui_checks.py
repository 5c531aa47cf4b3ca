"""The Compare tab's extra checks as the page shows them: the capability check's table carries the
report's own figures, and lm-eval's scores are laid out per task and metric with their errors."""

from __future__ import annotations

from explorer.evaluate.capability import capability
from explorer.apply.recipe import replay
from explorer.evaluate.tasks import TaskReport, TaskRun, TaskScore
from explorer.ui.checks_panel import capability_markdown, tasks_markdown
from tiny import SAMPLE_TEXT


def test_capability_table_shows_the_reports_figures(tiny_lm):
    variant = replay(tiny_lm, [{"op": "drop", "layers": [2]}])
    report = capability(tiny_lm, SAMPLE_TEXT, variant=variant, seqlen=32, max_tokens=128,
                        num_items=8, context_tokens=16).to_dict()
    md = capability_markdown(report, healed=True)
    d, c = report["dense"], report["compressed"]
    assert f"| next-token top-1 | {100 * d['next_token_top1']:.1f}% | " \
           f"{100 * c['next_token_top1']:.1f}% |" in md
    assert f"| last-word cloze | {100 * d['cloze_accuracy']:.1f}% | " \
           f"{100 * c['cloze_accuracy']:.1f}% |" in md
    assert "healed variant" in md and report["protocol"] in md
    g = report["generation"]
    assert f"| greedy tokens equal to the original's | 100% | " \
           f"{100 * g['token_agreement']:.1f}% |" in md
    assert f"{g['mean_first_disagreement']:.1f} of {g['new_tokens']} |" in md


def test_task_table_lays_out_each_metric_with_its_error():
    def run(label, acc, norm):
        return TaskRun(label=label, num_layers=6, samples={"arc_easy": 50},
                       num_fewshot={"arc_easy": 0}, seconds=1.0,
                       scores={"arc_easy": [TaskScore("acc", acc, 0.02),
                                            TaskScore("acc_norm", norm, None)]})
    report = TaskReport(tasks=["arc_easy"], limit=50, dense=run("dense", 0.5, 0.25),
                        compressed=run("drop 2", 0.375, 0.3125),
                        lm_eval_version="0.4.13").to_dict()
    md = tasks_markdown(report).splitlines()
    assert "| arc_easy (50 samples) | acc | 50.0% ± 2.0 | 37.5% ± 2.0 |" in md
    assert "| arc_easy (50 samples) | acc_norm | 25.0% | 31.2% |" in md
    assert md[0] == "| task | metric | original | variant |"
