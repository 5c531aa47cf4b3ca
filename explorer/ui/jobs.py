"""The heavy steps behind the buttons, each a plain function of names, sizes and recipe ops.

Every job takes only picklable values (a model spec, a text key, recipe ops, numbers), fetches the
resident model from the registry, rebuilds the variant from its ops, and returns CPU values, so the
same code runs in-process or inside a ZeroGPU worker (`gpu.gpu`). `progress` is a `gr.Progress` (or
None); jobs turn it into the `(fraction, message)` callback the explorer API takes.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from .. import measure, methods
from ..capability import capability
from ..evaluate import PPLResult, generate, perplexity
from ..heal import heal
from ..profiles import compare_models
from ..tasks import evaluate_tasks
from ..probe import ProbeResult, probe
from .gpu import ZERO_GPU, gpu
from .registry import REGISTRY, ProbeEntry


def callback(progress: Any, label: str = ""):
    """A `(fraction, message)` callback that drives a gr.Progress bar, or None.

    label: said before every message ("original model: 16/32 windows, ..."), for a job that runs
    several models in turn. Each message ends with the time left, estimated from this job's own
    rate since its first report (Gradio's own estimate is the mean duration of earlier runs of
    the button, whatever their sizes; the page hides it)."""
    if progress is None:
        return None
    start: list[tuple[float, float]] = []     # (time, fraction) of the first report

    def report(fraction: float, message: str) -> None:
        fraction = max(0.0, min(1.0, float(fraction)))
        now = time.monotonic()
        if not start:
            start.append((now, fraction))
        t0, f0 = start[0]
        left = ""
        if fraction > f0 and now - t0 >= 2 and fraction < 1:
            rest = (now - t0) * (1 - fraction) / (fraction - f0)
            left = f" — about {_duration(rest)} left"
        progress(fraction, desc=f"{label}: {message}{left}" if label else message + left)
    return report


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def _cpu_probe(pr: ProbeResult) -> ProbeResult:
    return dataclasses.replace(pr, states=pr.states.cpu(), last=pr.last.cpu(),
                               sample_of=pr.sample_of.cpu())


@gpu(duration=120)
def analyse_job(spec: str, text_key: str, seqlen: int, samples: int, max_tokens: int,
                progress: Any = None) -> ProbeEntry:
    """Probe the calibration text and compute every adjacent-layer profile."""
    cb = callback(progress)
    lm = REGISTRY.ensure_model(spec, cb)
    texts = REGISTRY.get_texts(text_key)
    pr = probe(lm, texts.calibration, seqlen=seqlen, num_samples=samples, max_tokens=max_tokens,
               progress=cb)
    adjacent = {}
    names = list(measure.MEASURES)
    for k, name in enumerate(names):
        if cb:
            cb(k / max(1, len(names)), f"adjacent-layer profile: {name}")
        adjacent[name] = to_numpy(measure.adjacent(pr, name))
    return ProbeEntry(probe=_cpu_probe(pr) if ZERO_GPU else pr, adjacent=adjacent,
                      seconds=pr.seconds)


@gpu(duration=120)
def similarity_job(pr: ProbeResult, name: str, progress: Any = None) -> np.ndarray:
    """The (L+1, L+1) matrix of one measure over the layer boundaries."""
    cb = callback(progress)
    if cb:
        cb(0.0, f"computing {name} between every pair of layer boundaries")
    return to_numpy(measure.similarity(pr, name))


@gpu(duration=120)
def ppl_job(spec: str, text_key: str, ops: list[dict], seqlen: int, max_tokens: int,
            progress: Any = None, label: str = "") -> PPLResult:
    """Perplexity of the variant built from `ops` (the original model for no ops); `label` names
    the model in the progress messages."""
    cb = callback(progress, label)
    lm = REGISTRY.ensure_model(spec, cb)
    texts = REGISTRY.get_texts(text_key)
    variant = REGISTRY.variant(lm, ops)
    return perplexity(lm, texts.evaluation, variant=variant, seqlen=seqlen, max_tokens=max_tokens,
                      source=texts.source, progress=cb)


@gpu(duration=60)
def generate_job(spec: str, ops: list[dict], prompts: list[str], max_new_tokens: int) -> list[str]:
    lm = REGISTRY.ensure_model(spec)
    return generate(lm, prompts, variant=REGISTRY.variant(lm, ops), max_new_tokens=max_new_tokens)


def _plain(x: Any) -> Any:
    """JSON-ready copy of a plan field (tensors and arrays become lists)."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return to_numpy(x).tolist()
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


@gpu(duration=300)
def compress_job(spec: str, text_key: str, method: str, remove: int | None, ratio: float | None,
                 seqlen: int, samples: int, params: dict, progress: Any = None) -> dict:
    """Ask a method for a plan; returns its recipe ops and what it removes or merges."""
    cb = callback(progress)
    lm = REGISTRY.ensure_model(spec, cb)
    texts = REGISTRY.get_texts(text_key)
    size = {"remove": int(remove) if remove else None, "ratio": float(ratio) if ratio else None}
    # a builtin source lets recipes with fitted layers be replayed in another process
    builtin = texts.source if text_key == texts.source else None
    plan = methods.compress(lm, method, calibration=texts.calibration, seqlen=seqlen,
                            num_samples=samples, progress=cb, calibration_source=builtin,
                            **size, **params)
    ops = [dict(op) for op in plan.recipe().ops]
    if not ZERO_GPU:  # same process: keep the built variant so applying it costs nothing
        REGISTRY.remember_variant(plan.variant, ops)
    return {"method": plan.method, "params": _plain(dict(plan.params or {})), "ops": _plain(ops),
            "removed": [int(i) for i in (plan.removed or [])],
            "merged": [[int(i) for i in g] for g in (plan.merged or [])],
            "scores": _plain(plan.scores), "notes": _plain(plan.notes),
            "layers_after": int(plan.variant.num_layers)}


@gpu(duration=600)
def heal_job(spec: str, text_key: str, ops: list[dict], mode: str, steps: int | None,
             seconds: float | None, params: dict, progress: Any = None) -> dict:
    """Heal the variant of `ops` on the session's calibration text; returns the healed variant's
    ops (`ops` plus the heal op) and the result's figures (`HealResult.to_dict()`)."""
    cb = callback(progress)
    lm = REGISTRY.ensure_model(spec, cb)
    texts = REGISTRY.get_texts(text_key)
    builtin = texts.source if text_key == texts.source else None
    r = heal(REGISTRY.variant(lm, ops), mode, calibration=texts.calibration,
             calibration_source=builtin, steps=steps, seconds=seconds, progress=cb, **params)
    new_ops = [dict(op) for op in ops] + [dict(r.variant.steps[-1])]
    if not ZERO_GPU:  # same process: keep the healed variant, whose replay would train again
        REGISTRY.remember_variant(r.variant, new_ops)
    return {"ops": _plain(new_ops), "result": _plain(r.to_dict())}


@gpu(duration=300)
def capability_job(spec: str, text_key: str, ops: list[dict], seqlen: int, max_tokens: int,
                   progress: Any = None) -> dict:
    """Next-token and cloze accuracy of the original model and of the variant of `ops`."""
    cb = callback(progress)
    lm = REGISTRY.ensure_model(spec, cb)
    texts = REGISTRY.get_texts(text_key)
    report = capability(lm, texts.evaluation, variant=REGISTRY.variant(lm, ops), seqlen=seqlen,
                        max_tokens=max_tokens, source=texts.source, progress=cb)
    return report.to_dict()


@gpu(duration=600)
def tasks_job(spec: str, ops: list[dict], tasks: str, limit: int | None,
              progress: Any = None) -> dict:
    """lm-eval accuracy of the original model and of the variant of `ops`."""
    cb = callback(progress)
    lm = REGISTRY.ensure_model(spec, cb)
    return evaluate_tasks(lm, tasks, variant=REGISTRY.variant(lm, ops), limit=limit,
                          progress=cb).to_dict()


def profiles_job(models: list[str], measure: str, text: str, seqlen: int, samples: int,
                 progress: Any = None) -> dict:
    """Adjacent-layer profiles of several models on relative depth (each loaded in turn)."""
    return compare_models(models, measure=measure, text=text, seqlen=seqlen, samples=samples,
                          progress=callback(progress)).to_dict()
