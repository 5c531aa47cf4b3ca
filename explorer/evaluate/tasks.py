"""Zero-shot task accuracy through lm-evaluation-harness, run in-process on a variant.

The papers of the field report task accuracy from EleutherAI's lm-evaluation-harness ("lm-eval")
next to perplexity. Here the variant is put in place (`Variant.applied()`, which holds the model's
lock) and the live model object is handed to lm-eval's own Hugging Face model class (`HFLM`), so
the figures are lm-eval's, computed by lm-eval's code, with no export round trip.

Task names are lm-eval's (`arc_easy`, `hellaswag`, ...: their data come from the Hugging Face hub)
or paths to local task definitions: a task YAML file (or a folder of them) whose data set is a local
JSON/JSONL/CSV file (`dataset_path: json`, `dataset_kwargs: {data_files: ...}`), which works with
no network. docs/evaluation.md shows one.

Protocol (lm-eval's defaults, stated with every result): zero-shot unless the task says otherwise
(or `num_fewshot`), each choice scored by the summed log-likelihood of its continuation; `acc`
picks the highest, `acc_norm` the highest per byte; the standard error is lm-eval's (the sample
standard error of the mean for `acc`). lm-eval seeds Python, NumPy and torch (0, 1234, 1234) at
the start of every run, as its own command line does.

Example:
    >>> report = evaluate_tasks(lm, ["tests/data/tiny_mc.yaml"], variant=v, limit=50)
    >>> report.to_dict()["tasks"][0]["metrics"][0]      # {"metric": "acc", "dense": ..., ...}
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from explorer.core.model import LoadedModel
from explorer.core.progress import Event, Progress
from explorer.evaluate.task_index import (TaskError, check_limit, hub_offline_if_unreachable,
                                          import_lm_eval, installed_version, load_check,
                                          parse_task_list, resolve_tasks)
from explorer.core.variant import Variant



@dataclass(frozen=True)
class TaskScore:
    """One metric of one task for one model."""

    metric: str                 # "acc", "acc_norm", "exact_match", ...
    value: float
    stderr: float | None        # lm-eval's standard error; None where it gives none


@dataclass(frozen=True)
class TaskRun:
    """Every task's metrics for one model (the dense model or a variant)."""

    label: str                                      # "dense" or the variant's description
    num_layers: int
    scores: dict[str, list[TaskScore]]              # task name -> its metrics
    samples: dict[str, int]                         # task name -> samples evaluated
    num_fewshot: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class TaskReport:
    """lm-eval accuracy of the dense model and (optionally) a variant, side by side."""

    tasks: list[str]
    limit: int | None
    dense: TaskRun | None
    compressed: TaskRun | None
    lm_eval_version: str
    notes: list[str] = field(default_factory=list)

    def runs(self) -> list[TaskRun]:
        return [r for r in (self.dense, self.compressed) if r is not None]

    def protocol(self) -> str:
        lim = f", first {self.limit} samples per task" if self.limit else ", all samples"
        return (f"lm-evaluation-harness {self.lm_eval_version} in-process (HFLM on the live model)"
                f"{lim}; multiple choice scored by summed log-likelihood per choice")

    def to_dict(self) -> dict:
        """JSON-ready: per task, per metric, the dense and compressed values with their errors."""
        rows = []
        for task in self.tasks:
            ref = self.dense or self.compressed
            metrics = []
            for score in ref.scores.get(task, []):
                entry: dict[str, Any] = {"metric": score.metric}
                for run, key in ((self.dense, "dense"), (self.compressed, "compressed")):
                    if run is None:
                        continue
                    found = next((s for s in run.scores.get(task, []) if s.metric == score.metric),
                                 None)
                    entry[key] = found.value if found else None
                    entry[f"{key}_stderr"] = found.stderr if found else None
                metrics.append(entry)
            rows.append({"task": task, "samples": ref.samples.get(task),
                         "num_fewshot": ref.num_fewshot.get(task), "metrics": metrics})
        out: dict[str, Any] = {"tasks": rows, "limit": self.limit,
                               "lm_eval_version": self.lm_eval_version,
                               "protocol": self.protocol(), "notes": list(self.notes)}
        for run, key in ((self.dense, "dense"), (self.compressed, "compressed")):
            if run is not None:
                out[key] = {"label": run.label, "num_layers": run.num_layers,
                            "seconds": round(run.seconds, 2)}
        return out


def _progress_hflm(HFLM: type, progress: Progress | None, lo: float, hi: float, label: str):
    """An HFLM that reports events (fraction lo..hi) as its requests are scored; raising in `progress`
    (the app's Stop) ends the run at the next batch."""

    class ProgressHFLM(HFLM):
        _total = 0
        _done = 0

        def _start(self, requests: list) -> None:
            self._total, self._done = len(requests), 0

        def _step(self, rows: int) -> None:
            self._done += rows
            if progress and self._total:
                frac = min(self._done / self._total, 1.0)
                progress(Event(f"lm-eval ({label})", lo + (hi - lo) * frac,
                               step=min(self._done, self._total), total=self._total,
                               unit="requests"))

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            self._start(requests)
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            self._start(requests)
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            self._start(requests)
            return super().generate_until(requests, disable_tqdm=True)

        def _model_call(self, inps, attn_mask=None, labels=None):
            out = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
            self._step(inps.shape[0])
            return out

        def _model_generate(self, context, max_length, stop, **kwargs):
            out = super()._model_generate(context, max_length, stop, **kwargs)
            self._step(context.shape[0])
            return out

    return ProgressHFLM


def _default_batch_size(lm: LoadedModel) -> int:
    return 32 if lm.device.type == "cuda" else 8


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):   # lm-eval writes "N/A" where it has no standard error
        return None
    return v if math.isfinite(v) else None


def _scores(results: dict, tasks: list[str]) -> tuple[dict, dict, dict]:
    """lm-eval's results dict -> (task -> [TaskScore]), (task -> samples), (task -> n-shot)."""
    scores, samples, shots = {}, {}, {}
    for task in tasks:
        res = results["results"].get(task, {})
        found = []
        for key, value in res.items():
            metric, _, filt = key.partition(",")
            if metric in ("alias", "name", "sample_len") or metric.endswith("_stderr") or not filt:
                continue
            if _finite(value) is None:
                continue
            stderr = res.get(f"{metric}_stderr,{filt}")
            name = metric if filt == "none" else f"{metric} ({filt})"
            found.append(TaskScore(name, float(value), _finite(stderr)))
        scores[task] = found
        n = results.get("n-samples", {}).get(task, {})
        samples[task] = int(n.get("effective", n.get("original", 0)) or 0)
        shots[task] = int(results.get("n-shot", {}).get(task, 0) or 0)
    return scores, samples, shots


def run_lm_eval(lm: LoadedModel, manager: Any, tasks: list[str], *, variant: Variant | None = None,
                limit: int | None = None, num_fewshot: int | None = None,
                batch_size: int | None = None, progress: Progress | None = None,
                span: tuple[float, float] = (0.0, 1.0)) -> TaskRun:
    """lm-eval's `simple_evaluate` on `variant` (default: the loaded model as it is)."""
    simple_evaluate, HFLM, _ = import_lm_eval()
    variant = variant or Variant.identity(lm)
    label = "dense" if variant.is_identity() else variant.describe()
    cls = _progress_hflm(HFLM, progress, span[0], span[1], label)
    start = time.perf_counter()
    with variant.applied() as model, hub_offline_if_unreachable():
        hflm = cls(pretrained=model, tokenizer=lm.tokenizer,
                   batch_size=batch_size or _default_batch_size(lm))
        results = simple_evaluate(model=hflm, tasks=list(tasks), task_manager=manager,
                                  limit=limit, num_fewshot=num_fewshot, log_samples=False)
    if results is None:   # only on non-zero ranks of a distributed run
        raise TaskError("lm-eval returned no results")
    scores, samples, shots = _scores(results, tasks)
    return TaskRun(label=label, num_layers=variant.num_layers, scores=scores, samples=samples,
                   num_fewshot=shots, seconds=time.perf_counter() - start)


def evaluate_tasks(lm: LoadedModel, tasks: str | Sequence[str], *, variant: Variant | None = None,
                   limit: int | None = None, num_fewshot: int | None = None,
                   batch_size: int | None = None, dense: bool = True,
                   progress: Progress | None = None) -> TaskReport:
    """lm-eval accuracy (with standard errors) of the dense model and of `variant`, side by side.

    tasks: lm-eval task names and/or paths to local task YAML files or folders ("a,b" or a list).
    variant: the compressed model; None or the identity evaluates the dense model only.
    limit: samples per task (None: all). num_fewshot: None = each task's default.
    dense: also evaluate the dense model (False: the variant alone, e.g. when the dense figure is
        already known).
    progress: events as requests are scored; raising in it (a cancel token) stops the run.
    """
    limit = check_limit(limit)
    if num_fewshot is not None and (not isinstance(num_fewshot, int) or num_fewshot < 0):
        raise TaskError(f"num_fewshot must be 0 or more (got {num_fewshot!r})")
    if progress:
        progress(Event("lm-eval", 0.0, note="indexing tasks"))
    manager, names = resolve_tasks(parse_task_list(tasks))
    load_check(manager, names)
    compressed = variant is not None and not variant.is_identity()
    plan = ([("dense", None)] if dense or not compressed else []) + \
        ([("compressed", variant)] if compressed else [])
    runs: dict[str, TaskRun] = {}
    for k, (key, v) in enumerate(plan):
        span = (k / len(plan), (k + 1) / len(plan))
        runs[key] = run_lm_eval(lm, manager, names, variant=v, limit=limit,
                                num_fewshot=num_fewshot, batch_size=batch_size,
                                progress=progress, span=span)
    if progress:
        progress(Event("lm-eval", 1.0, note="done"))
    return TaskReport(tasks=names, limit=limit, dense=runs.get("dense"),
                      compressed=runs.get("compressed"), lm_eval_version=installed_version())
