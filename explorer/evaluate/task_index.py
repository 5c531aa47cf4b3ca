"""Which lm-eval tasks a run asks for: lm-eval's own task names or local task YAML files, checked
and their data loaded before any model time is spent; and an offline task written from rows.

The index of lm-eval's built-in tasks takes seconds to build, so it is kept in the cache service
("lm-eval task indexes"). When the hub's host does not resolve, `datasets` and `huggingface_hub`
are put in offline mode for the data check only (and put back after it), so that a hub task
fails at once, in one line, instead of after the libraries' retries.
"""

from __future__ import annotations

import contextlib
import difflib
import threading
from pathlib import Path
from typing import Any, Iterator, Sequence

from explorer.core.cache import Store
from explorer.core.errors import ExplorerError, one_line
from explorer.load.spec import unreachable_hub_host
LM_EVAL_VERSION = "0.4.13"              # pinned in requirements.txt
INSTALL = f"pip install lm-eval=={LM_EVAL_VERSION}"
MAX_TASKS = 32                          # a typo'd glob must not queue hundreds of tasks
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")   # datasets' file loaders
# The zero-shot suite the layer-pruning papers report (ShortGPT, LaCo, SLEB, ...), for pickers.
SUGGESTED_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "piqa", "winogrande", "boolq",
                   "openbookqa", "lambada_openai")


class TaskError(ExplorerError):
    """An lm-eval task that is unknown, cannot be read, or whose data cannot be reached."""


def import_lm_eval():
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
        _, _, TaskManager = import_lm_eval()
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
def hub_offline_if_unreachable() -> Iterator[str | None]:
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
    with hub_offline_if_unreachable() as offline_host:
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


def write_local_task(folder: str | Path, name: str, rows: list[dict]) -> Path:
    """An offline multiple-choice task in lm-eval's own format: `folder/name.jsonl` with `rows`
    ({"context", "choices", "answer"}) and `folder/name.yaml` pointing at it; returns the YAML,
    which `--tasks` and `evaluate_tasks` take as a task name.

    For the bundled text: `write_local_task(folder, "wiki_cloze",
    multiple_choice(cloze_items(load_texts("wiki").evaluation, 100)))` (explorer.evaluate.capability).
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


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm-eval")
    except PackageNotFoundError:
        return "?"
