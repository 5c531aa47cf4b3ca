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

import contextlib
import difflib
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from .cache import Store
from .errors import ExplorerError, one_line
from .load import LoadedModel, unreachable_hub_host
from .progress import Event, Progress
from .variant import Variant

LM_EVAL_VERSION = "0.4.13"              # pinned in requirements.txt
INSTALL = f"pip install lm-eval=={LM_EVAL_VERSION}"
MAX_TASKS = 32                          # a typo'd glob must not queue hundreds of tasks
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")   # datasets' file loaders
# The zero-shot suite the layer-pruning papers report (ShortGPT, LaCo, SLEB, ...), for pickers.
SUGGESTED_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq",
                   "openbookqa", "lambada_openai")


class TaskError(ExplorerError):
    """An lm-eval task that is unknown, cannot be read, or whose data cannot be reached."""


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


def _lm_eval():
    """Import lm-eval, or say how to install it."""
    try:
        import lm_eval  # noqa: F401
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise TaskError(f"lm-evaluation-harness is not installed ({one_line(exc)}); run: "
                        f"{INSTALL}") from None
    return simple_evaluate, HFLM, TaskManager


def check_limit(limit: int | None) -> int | None:
    """None (every sample) or a positive whole number of samples per task."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise TaskError(f"--limit must be a positive number of samples per task (got {limit!r}); "
                        "leave it out to evaluate every sample")
    return limit


def parse_task_list(spec: str | Sequence[str] | None) -> list[str]:
    """'arc_easy, hellaswag' or a list -> ['arc_easy', 'hellaswag'] (duplicates dropped)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec or [])
    out: list[str] = []
    for item in items:
        item = str(item).strip()
        if item and item not in out:
            out.append(item)
    if len(out) > MAX_TASKS:
        raise TaskError(f"{len(out)} tasks asked for; at most {MAX_TASKS} per run")
    return out


def _local_tasks(path: Path) -> list[str]:
    """Task names declared by a YAML file, or by every YAML file in a folder."""
    import yaml

    files = [path] if path.is_file() else sorted(path.glob("*.y*ml"))
    names = []
    for f in files:
        try:
            cfg = yaml.safe_load(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise TaskError(f"could not read task file '{f}': {one_line(exc)}") from None
        if isinstance(cfg, dict) and isinstance(cfg.get("task"), str):
            names.append(cfg["task"])
    if not names:
        raise TaskError(f"'{path}' declares no lm-eval task (a YAML file with a 'task:' name)")
    return names


_TASK_INDEXES: Store[Any] = Store("lm-eval task indexes", size=4)


def _task_manager(include: tuple[str, ...], defaults: bool):
    """lm-eval's task index (indexing its built-in tasks takes seconds: built once per process,
    kept in the cache service)."""
    def build():
        _, _, TaskManager = _lm_eval()
        return TaskManager(include_path=list(include) or None, include_defaults=defaults)

    return _TASK_INDEXES.get_or_compute((include, defaults), build)


def resolve_tasks(names: Sequence[str]) -> tuple[Any, list[str]]:
    """(lm-eval TaskManager, task names) for names that are lm-eval task names or paths to local
    task YAML files / folders; one-line errors for anything unknown."""
    names = parse_task_list(names)
    if not names:
        raise TaskError("no task given; name lm-eval tasks (e.g. arc_easy,hellaswag) or a local "
                        "task YAML file")
    include: list[str] = []
    wanted: list[str] = []
    registered: list[str] = []
    for name in names:
        path = Path(name).expanduser()
        if name.endswith((".yaml", ".yml")) or path.is_dir():
            if not path.exists():
                raise TaskError(f"task file '{name}' does not exist")
            include.append(str((path if path.is_dir() else path.parent).resolve()))
            wanted.extend(n for n in _local_tasks(path) if n not in wanted)
        else:
            registered.append(name)
            wanted.append(name)
    manager = _task_manager(tuple(dict.fromkeys(include)), bool(registered))
    known = set(manager.all_tasks)
    for name in registered:
        if name not in known:
            close = difflib.get_close_matches(name, manager.all_subtasks, n=3, cutoff=0.75)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise TaskError(f"unknown lm-eval task '{name}'{hint} (lm-eval {LM_EVAL_VERSION} "
                            f"knows {len(manager.all_subtasks):,} tasks; a local task is given as "
                            "the path to its YAML file)")
    return manager, wanted


_OFFLINE_LOCK = threading.Lock()


@contextlib.contextmanager
def _hub_offline_if_unreachable() -> Iterator[str | None]:
    """When the hub's host does not resolve, put `datasets` and `huggingface_hub` in offline mode
    for the block: a hub task then fails at once (cached data sets still load) instead of after
    ~25 s of retries. Yields the unreachable host, or None."""
    host = unreachable_hub_host()
    if host is None:
        yield None
        return
    import datasets.config as ds_config
    import huggingface_hub.constants as hub_constants

    with _OFFLINE_LOCK:
        saved = hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE
        hub_constants.HF_HUB_OFFLINE = ds_config.HF_HUB_OFFLINE = True
        try:
            yield host
        finally:
            hub_constants.HF_HUB_OFFLINE, ds_config.HF_HUB_OFFLINE = saved


def _dataset_of(manager: Any, task: str) -> str:
    entry = manager.task_index.get(task)
    cfg = getattr(entry, "cfg", None) or {}
    return str(cfg.get("dataset_path") or "?")


def load_check(manager: Any, tasks: list[str]) -> None:
    """Load the tasks' data once, so that a task whose data cannot be reached fails here, in one
    line, before any model time is spent."""
    with _hub_offline_if_unreachable() as offline_host:
        for task in tasks:
            try:
                manager.load([task])
            except Exception as exc:  # datasets/hub errors, bad YAML fields, missing data files
                dataset = _dataset_of(manager, task)
                msg = one_line(exc)
                hubish = dataset not in LOCAL_BUILDERS and not Path(dataset).exists()
                if hubish and (offline_host or "offline" in msg.lower()
                               or "couldn't reach" in msg.lower() or "connect" in msg.lower()):
                    where = f"{offline_host} cannot be reached from this machine (no network?)" \
                        if offline_host else "the hub cannot be reached (offline mode or no network)"
                    raise TaskError(f"task '{task}' needs its data set '{dataset}' from the Hugging "
                                    f"Face hub, but {where} and it is not cached; run it online "
                                    "once, or give a local task YAML (docs/evaluation.md)") from None
                raise TaskError(f"could not load lm-eval task '{task}': {msg}") from None


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
    simple_evaluate, HFLM, _ = _lm_eval()
    variant = variant or Variant.identity(lm)
    label = "dense" if variant.is_identity() else variant.describe()
    cls = _progress_hflm(HFLM, progress, span[0], span[1], label)
    start = time.perf_counter()
    with variant.applied() as model, _hub_offline_if_unreachable():
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
                      compressed=runs.get("compressed"), lm_eval_version=_installed_version())


def write_local_task(folder: str | Path, name: str, rows: list[dict]) -> Path:
    """An offline multiple-choice task in lm-eval's own format: `folder/name.jsonl` with `rows`
    ({"context", "choices", "answer"}) and `folder/name.yaml` pointing at it; returns the YAML,
    which `--tasks` and `evaluate_tasks` take as a task name.

    For the bundled text: `write_local_task(folder, "wiki_cloze",
    multiple_choice(cloze_items(load_texts("wiki").evaluation, 100)))` (explorer.capability).
    """
    import json

    if not name.replace("_", "").isalnum():
        raise TaskError(f"task name '{name}' must be letters, digits and underscores")
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps({k: r[k] for k in ("context", "choices", "answer")})
                                + "\n" for r in rows), encoding="utf-8")
        yaml = folder / f"{name}.yaml"
        yaml.write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {json.dumps(str(data.resolve()))}\ntest_split: test\n"
            "output_type: multiple_choice\n"
            'doc_to_text: "{{context}}"\ndoc_to_choice: "{{choices}}"\n'
            'doc_to_target: "{{answer}}"\nmetric_list:\n'
            "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
            "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n",
            encoding="utf-8")
    except OSError as exc:
        raise TaskError(f"could not write task '{name}' to '{folder}': {one_line(exc)}") from None
    except KeyError as exc:
        raise TaskError(f"task rows need context, choices and answer (missing {exc})") from None
    return yaml


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm-eval")
    except PackageNotFoundError:
        return "?"
