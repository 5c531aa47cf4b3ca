"""Shared pieces of the benchmarks: the row format, timing helpers and the machine description.

Every benchmark module in bench/ exposes `run(quick: bool = True) -> list[dict]` and returns rows
made by `row(...)`:

    {"bench": "perplexity", "name": "tokens/s, smollm2-135m fp32", "ours": 1234.0,
     "baseline": 567.0, "unit": "tok/s", "ratio": 2.18, "note": "guide loop: ..."}

`ratio` is always "how many times better ours is": ours / baseline for rates (higher is better,
e.g. tokens/s) and baseline / ours for costs (lower is better: seconds, bytes). `row` works it out
from `higher_is_better`, so a reader can take any ratio > 1 as a win.

Timing follows nanoGPT's bench.py: warm-up calls first, synchronise the device around each timed
call, time every repetition separately and report the median. The machine this project runs on is
shared with other jobs, so `interleaved` times ours and the baseline alternately in the same run:
a burst of load from a neighbour then hits both instead of only one of them.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[1]   # the checkout; `explorer` is the installed package

ROW_KEYS = ("bench", "name", "ours", "baseline", "unit", "ratio", "note")

DEFAULT_MODEL = "smollm2-135m"


def row(bench: str, name: str, ours: float | None, baseline: float | None, unit: str, *,
        higher_is_better: bool, note: str = "") -> dict[str, Any]:
    """One result row; `ratio` > 1 means ours is better (see the module docstring).

    ours / baseline may be None when one side could not be measured (e.g. no GPU): ratio is None.
    """
    ratio = None
    if ours is not None and baseline is not None and ours > 0 and baseline > 0:
        ratio = ours / baseline if higher_is_better else baseline / ours
    return {"bench": bench, "name": name, "ours": ours, "baseline": baseline, "unit": unit,
            "ratio": ratio, "note": note}


def check_row(r: dict) -> None:
    """Raise ValueError when `r` is not a well-formed row (used by the smoke test and the CLI)."""
    if tuple(r) != ROW_KEYS:
        raise ValueError(f"row keys {tuple(r)} != {ROW_KEYS}")
    for key in ("bench", "name", "unit", "note"):
        if not isinstance(r[key], str):
            raise ValueError(f"row field {key!r} must be a string: {r!r}")
    for key in ("ours", "baseline", "ratio"):
        if r[key] is not None and not isinstance(r[key], (int, float)):
            raise ValueError(f"row field {key!r} must be a number or None: {r!r}")


# -- timing -------------------------------------------------------------------------------------

def model_and_calibration(model: str, lm: Any = None, text: str | None = None) -> tuple[Any, str]:
    """The loaded model and calibration text a benchmark runs on: those given, else `model`
    loaded and the bundled wiki calibration half."""
    from explorer import load_model, load_texts

    return (lm if lm is not None else load_model(model),
            text if text is not None else load_texts("wiki").calibration)


def module_at(path: Path):
    """The Python file at `path` imported as a module by its path (tests/tiny.py for the GPU
    bench), without adding its folder to sys.path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sync(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work (no-op on CPU), so that a timer measures finished work."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def time_once(fn: Callable[[], Any], device: torch.device | str | None = None) -> tuple[float, Any]:
    """(seconds, result) of one call of fn, synchronised on both sides."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def interleaved(fns: dict[str, Callable[[], Any]], *, reps: int = 3, warmup: int = 1,
                device: torch.device | str | None = None) -> tuple[dict[str, list[float]],
                                                                   dict[str, Any]]:
    """Time several functions alternately: warm-up calls, then `reps` rounds of one call each.

    Returns ({name: [seconds per repetition]}, {name: result of its last call}).
    """
    results: dict[str, Any] = {}
    for _ in range(warmup):
        for name, fn in fns.items():
            results[name] = fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            dt, results[name] = time_once(fn, device)
            times[name].append(dt)
    return times, results


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: list[float]) -> str:
    """'min..max' of the repetitions, for the note column (how noisy the machine was)."""
    return f"{min(xs):.3g}..{max(xs):.3g}"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports ru_maxrss in KiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters())
               + list(module.buffers()))


# -- the machine --------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """Where the figures were taken: date, CPU, cores, threads, GPU, versions."""
    import transformers

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(), "nproc": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["loadavg_1min"] = os.getloadavg()[0]
    except OSError:
        pass
    return info


# -- output -------------------------------------------------------------------------------------

def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"
    return str(x)


def format_table(rows: list[dict]) -> str:
    """A plain-text table of rows (bench, name, ours, baseline, unit, ratio, note)."""
    head = ["bench", "name", "ours", "baseline", "unit", "ratio", "note"]
    cells = [[_fmt(r[k]) if k != "ratio" else (f"{r[k]:.2f}x" if r[k] else "-") for k in head]
             for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
              for i, h in enumerate(head)]
    widths[-1] = len(head[-1])  # the note column is left ragged
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)


def markdown_table(rows: list[dict]) -> str:
    """The rows as a Markdown table (for RESULTS.md)."""
    out = ["| bench | name | ours | baseline | unit | ratio | note |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
        out.append(f"| {r['bench']} | {r['name']} | {_fmt(r['ours'])} | {_fmt(r['baseline'])} | "
                   f"{r['unit']} | {ratio} | {r['note'].replace('|', '/')} |")
    return "\n".join(out)


def quiet() -> None:
    """Silence transformers' logging and progress bars so the table stays readable."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass


def main(run: Callable[[bool], list[dict]]) -> None:
    """Entry point of each bench module: `python bench/bench_x.py [--full]`."""
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--full", action="store_true", help="more tokens and repetitions")
    args = p.parse_args()
    quiet()
    print(machine())
    rows = run(not args.full)
    print(format_table(rows))
