"""The heavy steps behind the buttons, each a plain function of names, sizes and recipe ops.

Every job takes only picklable values (a model spec, a text key, recipe ops, numbers), fetches the
resident model from the registry, rebuilds the variant from its ops, and returns CPU values, so the
same code runs in-process or inside a ZeroGPU worker (`gpu.gpu`). `progress` is the pipeline's
`Progress` (events; `stop.watch` makes it from a gr.Progress and the session's Stop) or None.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np
import torch

import tempfile
import uuid
import zipfile
from pathlib import Path

from explorer.measure import measures as measure
from explorer import plan as methods
from explorer.evaluate.capability import capability
from explorer.measure.damage import DamageMap, damage_map
from explorer.evaluate.perplexity import PPLResult, perplexity
from explorer.evaluate.generate import generate
from explorer.export.folder import export
from explorer.apply.fitted import fitted_path
from explorer.apply.recipe import Recipe
from explorer.heal import heal
from explorer.evaluate.gate import quality_gate
from explorer.measure.profiles import compare_models, profile_of
from explorer.core.progress import Event, Progress, scaled
from explorer.heal.registry import HealResult
from explorer.report.build import ReportAnalysis, ReportSizes, Subject, build_report
from explorer.evaluate.speed import measure_speed
from explorer.evaluate.tasks import evaluate_tasks
from explorer.probe.probe import ProbeResult, probe
from explorer.ui.gpu import ZERO_GPU, gpu
from explorer.ui.caches import APP_CACHES, ProbeEntry


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def _cpu_probe(pr: ProbeResult) -> ProbeResult:
    return dataclasses.replace(pr, states=pr.states.cpu(), last=pr.last.cpu(),
                               sample_of=pr.sample_of.cpu())


@gpu(duration=120)
def analyse_job(spec: str, text_key: str, seqlen: int, samples: int, max_tokens: int,
                progress: Progress | None = None) -> ProbeEntry:
    """Probe the calibration text and compute every adjacent-layer profile."""
    lm = APP_CACHES.ensure_model(spec, progress)
    texts = APP_CACHES.get_texts(text_key)
    pr = probe(lm, texts.calibration, seqlen=seqlen, num_samples=samples, max_tokens=max_tokens,
               progress=progress)
    adjacent = {}
    names = list(measure.MEASURES)
    for k, name in enumerate(names):
        if progress:
            progress(Event("analysis", k / max(1, len(names)), note=f"adjacent-layer profile: "
                           f"{measure.MEASURES[name].title}"))
        adjacent[name] = to_numpy(measure.adjacent(pr, name))
    return ProbeEntry(probe=_cpu_probe(pr) if ZERO_GPU else pr, adjacent=adjacent,
                      seconds=pr.seconds)


@gpu(duration=120)
def similarity_job(pr: ProbeResult, name: str, progress: Progress | None = None) -> np.ndarray:
    """The (L+1, L+1) matrix of one measure over the layer boundaries."""
    if progress:
        progress(Event("analysis", 0.0, note=f"computing {measure.MEASURES[name].title} between "
                                             "every pair of layer boundaries"))
    return to_numpy(measure.similarity(pr, name))


@gpu(duration=600)
def damage_job(spec: str, ids: torch.Tensor, max_block: int,
               progress: Progress | None = None,
               on_cell: Callable[[DamageMap], None] | None = None) -> DamageMap:
    """The measured damage map on the analysis' calibration windows `ids` (W, T); a Stop
    (through `progress`) returns the cells done, marked partial; `on_cell` sees the map after
    each candidate (live fill-in)."""
    lm = APP_CACHES.ensure_model(spec, progress)
    return damage_map(lm, ids, max_block=max_block, progress=progress, on_cell=on_cell)


@gpu(duration=120)
def ppl_job(spec: str, text_key: str, ops: list[dict], seqlen: int, max_tokens: int,
            progress: Progress | None = None, label: str = "") -> PPLResult:
    """Perplexity of the variant built from `ops` (the original model for no ops); `label` names
    the model in the progress events' stage ("original model: perplexity")."""
    progress = scaled(progress, 0.0, 1.0, label) if label else progress
    lm = APP_CACHES.ensure_model(spec, progress)
    texts = APP_CACHES.get_texts(text_key)
    variant = APP_CACHES.variant(lm, ops)
    return perplexity(lm, texts.evaluation, variant=variant, seqlen=seqlen, max_tokens=max_tokens,
                      source=texts.source, progress=progress)


@gpu(duration=60)
def generate_job(spec: str, ops: list[dict], prompts: list[str], max_new_tokens: int) -> list[str]:
    lm = APP_CACHES.ensure_model(spec)
    return generate(lm, prompts, variant=APP_CACHES.variant(lm, ops), max_new_tokens=max_new_tokens)


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
                 seqlen: int, samples: int, params: dict, progress: Progress | None = None) -> dict:
    """Ask a method for a plan; returns its recipe ops and what it removes or merges."""
    lm = APP_CACHES.ensure_model(spec, progress)
    texts = APP_CACHES.get_texts(text_key)
    size = {"remove": int(remove) if remove else None, "ratio": float(ratio) if ratio else None}
    # a builtin source lets recipes with fitted layers be replayed in another process
    builtin = texts.source if text_key == texts.source else None
    plan = methods.compress(lm, method, calibration=texts.calibration, seqlen=seqlen,
                            num_samples=samples, progress=progress, calibration_source=builtin,
                            **size, **params)
    return _plan_out(plan)


def _plan_out(plan: methods.Plan) -> dict:
    """A plan as the Plan tab keeps it: recipe ops and what it removes or merges."""
    ops = [dict(op) for op in plan.recipe().ops]
    if not ZERO_GPU:  # same process: keep the built variant so applying it costs nothing
        APP_CACHES.remember_variant(plan.variant, ops)
    return {"method": plan.method, "params": _plain(dict(plan.params or {})), "ops": _plain(ops),
            "removed": [int(i) for i in (plan.removed or [])],
            "merged": [[int(i) for i in g] for g in (plan.merged or [])],
            "scores": _plain(plan.scores), "notes": _plain(plan.notes),
            "layers_after": int(plan.variant.num_layers)}


@gpu(duration=600)
def gate_job(spec: str, text_key: str, method: str, max_ratio: float, seqlen: int, samples: int,
             ppl_seqlen: int, ppl_max_tokens: int, params: dict, progress: Progress | None = None) -> dict:
    """The largest plan of `method` whose perplexity stays within max_ratio x the original's
    (explorer.evaluate.gate, unhealed); returns `compress_job`'s dict plus the gate's tries."""
    lm = APP_CACHES.ensure_model(spec, progress)
    texts = APP_CACHES.get_texts(text_key)
    builtin = texts.source if text_key == texts.source else None
    g = quality_gate(lm, method, max_ratio, evaluation=texts.evaluation,
                     evaluation_source=texts.source, calibration=texts.calibration,
                     calibration_source=builtin, seqlen=ppl_seqlen, max_tokens=ppl_max_tokens,
                     calib_seqlen=seqlen, calib_samples=samples, progress=progress, **params)
    return {**_plan_out(g.plan), "gate": _plain(g.to_dict())}


@gpu(duration=300)
def speed_job(spec: str, ops: list[dict], sizes: dict, progress: Progress | None = None) -> dict:
    """Measured speed and memory of the original model and of the variant of `ops`
    (explorer.evaluate.speed), interleaved; `sizes` are measure_speed's keyword arguments."""
    lm = APP_CACHES.ensure_model(spec, progress)
    return measure_speed(lm, APP_CACHES.variant(lm, ops), progress=progress, **sizes).to_dict()


@gpu(duration=600)
def heal_job(spec: str, text_key: str, ops: list[dict], mode: str, steps: int | None,
             seconds: float | None, params: dict, progress: Progress | None = None) -> dict:
    """Heal the variant of `ops` on the session's calibration text; returns the healed variant's
    ops (`ops` plus the heal op) and the result's figures (`HealResult.to_dict()`)."""
    lm = APP_CACHES.ensure_model(spec, progress)
    texts = APP_CACHES.get_texts(text_key)
    builtin = texts.source if text_key == texts.source else None
    r = heal(APP_CACHES.variant(lm, ops), mode, calibration=texts.calibration,
             calibration_source=builtin, steps=steps, seconds=seconds, progress=progress, **params)
    new_ops = [dict(op) for op in ops] + [dict(r.variant.steps[-1])]
    if not ZERO_GPU:  # same process: keep the healed variant, whose replay would train again
        APP_CACHES.remember_variant(r.variant, new_ops)
    return {"ops": _plain(new_ops), "result": _plain(r.to_dict())}


@gpu(duration=300)
def capability_job(spec: str, text_key: str, ops: list[dict], seqlen: int, max_tokens: int,
                   progress: Progress | None = None) -> dict:
    """Next-token and cloze accuracy of the original model and of the variant of `ops`."""
    lm = APP_CACHES.ensure_model(spec, progress)
    texts = APP_CACHES.get_texts(text_key)
    report = capability(lm, texts.evaluation, variant=APP_CACHES.variant(lm, ops), seqlen=seqlen,
                        max_tokens=max_tokens, source=texts.source, progress=progress)
    return report.to_dict()


@gpu(duration=600)
def tasks_job(spec: str, ops: list[dict], tasks: str, limit: int | None,
              progress: Progress | None = None) -> dict:
    """lm-eval accuracy of the original model and of the variant of `ops`."""
    lm = APP_CACHES.ensure_model(spec, progress)
    return evaluate_tasks(lm, tasks, variant=APP_CACHES.variant(lm, ops), limit=limit,
                          progress=progress).to_dict()


def profiles_job(models: list[str], measure: str, text: str, seqlen: int, samples: int,
                 progress: Progress | None = None) -> dict:
    """Adjacent-layer profiles of several models on relative depth (each loaded in turn)."""
    return compare_models(models, measure=measure, text=text, seqlen=seqlen, samples=samples,
                          progress=progress).to_dict()


def session_profile_job(spec: str, entry: ProbeEntry, measure: str, text_key: str,
                        progress: Progress | None = None) -> dict:
    """The adjacent-layer profile of the session's model from its analysis' probe (`entry`),
    as `profiles_job` gives one; the model is loaded back when another one replaced it."""
    lm = APP_CACHES.ensure_model(spec, progress)
    return profile_of(entry.probe, spec, lm.config.model_type, measure,
                      APP_CACHES.get_texts(text_key).source, entry.seconds).to_dict()


def load_job(spec: str, progress: Progress | None = None) -> dict:
    """Load the model (or keep the resident one): its name, size and the Model tab's facts."""
    lm = APP_CACHES.ensure_model(spec, progress)
    return {"spec": lm.spec, "num_layers": lm.num_layers, "num_parameters": lm.num_parameters,
            "info": lm.info()}


def variant_facts_job(spec: str, ops: list[dict]) -> dict:
    """Layers, parameters and description of the original model and of the variant of `ops`,
    and each slot's origin (an original layer index, or None for a new layer; `origins` the
    original index each slot stands at)."""
    lm = APP_CACHES.ensure_model(spec)
    v = APP_CACHES.variant(lm, ops)
    return {"layers_before": lm.num_layers, "layers_after": v.num_layers,
            "params_before": lm.num_parameters, "params_after": v.num_parameters(),
            "change": v.describe(),
            "slots": [s if isinstance(s, int) else None for s in v.slots],
            "origins": [v.origin(k) for k in range(v.num_layers)]}


def recipe_job(spec: str, ops: list[dict], method: str, params: dict, results: dict) -> str:
    """Write the recipe of `ops` for download; returns the file's path. Never builds the variant
    (a recipe with a heal op would train): the fitted ops' results come from the variants this
    process holds (`explorer.apply.fitted`). With such tensors the download is a .zip of recipe.json
    and recipe.fitted.safetensors; without, recipe.json alone (a replay then fits them again)."""
    lm = APP_CACHES.ensure_model(spec)
    recipe = Recipe(model=lm.spec, num_layers=lm.num_layers, ops=[dict(op) for op in ops],
                    method=method, params=dict(params or {}), results=dict(results or {}))
    folder = Path(tempfile.gettempdir()) / "layer-explorer-recipes" / uuid.uuid4().hex[:12]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.json"
    recipe.save(path, lm)
    tensors = fitted_path(path)
    if not tensors.exists():
        return str(path)
    bundle = folder / "recipe.zip"
    with zipfile.ZipFile(bundle, "w") as z:     # safetensors are already compact: store them
        z.write(path, path.name)
        z.write(tensors, tensors.name)
    return str(bundle)


def export_job(spec: str, ops: list[dict], name: str, root: str, method: str, params: dict,
               results: dict, overwrite: bool) -> tuple[str, int]:
    """Save the variant of `ops` as a transformers folder (with its recipe and fitted tensors);
    returns (the folder, its layer count)."""
    lm = APP_CACHES.ensure_model(spec)
    variant = APP_CACHES.variant(lm, ops)
    recipe = Recipe.of(variant, method=method, params=params, results=results)
    recipe.ops = [dict(op) for op in ops]  # the ops exactly as planned (and healed)
    path = export(variant, name, root=root, recipe=recipe, overwrite=overwrite)
    return str(path), variant.num_layers


@gpu(duration=300)
def report_job(spec: str, text_key: str, ops: list[dict], base_ops: list[dict] | None,
               method: str, params: dict, healing: HealResult | None,
               analysis: ReportAnalysis | None, measures: list[str], sizes: ReportSizes,
               progress: Progress | None = None, damage: DamageMap | None = None) -> str:
    """The HTML report (`explorer.report.build`) of the variant of `ops`. base_ops: the unhealed
    variant's ops when `ops` ends with the healing `healing`; analysis: the session's (None:
    the report probes the text itself with `sizes`); damage: the map measured on that
    analysis' windows, shown in the report."""
    lm = APP_CACHES.ensure_model(spec, progress)
    texts = APP_CACHES.get_texts(text_key)
    unhealed = APP_CACHES.variant(lm, base_ops) if healing is not None else None
    subject = Subject(APP_CACHES.variant(lm, ops), method, params, unhealed, healing)
    return build_report(lm, texts, subject, sizes=sizes, measures=measures, analysis=analysis,
                        damage=damage, progress=progress).html
