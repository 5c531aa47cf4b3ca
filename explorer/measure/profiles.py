"""Models side by side: adjacent-layer profiles of several models on relative depth 0..1.

A profile is what each layer alone does to the residual stream: the cell (i, i+1) of a similarity
measure (docs/measures.md) for every layer i of a model with L layers, drawn at relative depth
x_i = i / (L - 1), so that the first layer of every model sits at 0 and the last at 1 and models of
different depths overlay. The usual picture (ShortGPT, Men et al. 2024; Gromov et al. 2024): the
first and last layers change the stream most, the middle ones least, in every model.

Memory: only one model is resident at a time (`explorer.core.session.get_model` releases the previous
one before loading the next); what is kept is the profiles, L floats each, in a `ProfileStore`
keyed by model and settings. Asking again for a kept profile loads nothing.

Example:
    >>> cmp = compare_models(["smollm2-135m", "gemma3-270m"], measure="cosine")
    >>> [(p.model, p.x[:2], p.y[:2]) for p in cmp.profiles]
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from explorer.core.cache import Store
from explorer.core.errors import ExplorerError
from explorer.core.progress import Event, Progress, scaled
from explorer.probe.probe import ProbeResult

MAX_MODELS = 8          # a comparison loads each model once: keep the list short


@dataclass(frozen=True)
class LayerProfile:
    """One model's adjacent-layer curve."""

    model: str                   # the spec it was loaded from
    model_type: str
    measure: str
    higher_is_similar: bool
    num_layers: int
    x: list[float]               # relative depth of layer i: i / (L - 1)
    y: list[float]               # measure between boundary i and i + 1 (layer i's input, output)
    text: str                    # calibration source
    num_tokens: int
    seconds: float               # probe + measure

    def to_dict(self) -> dict:
        d = asdict(self)
        d["x"] = [round(v, 6) for v in self.x]
        d["y"] = [round(v, 6) for v in self.y]
        d["seconds"] = round(self.seconds, 2)
        return d


def relative_depth(num_layers: int) -> list[float]:
    """x_i = i / (L - 1) for i = 0..L-1 (a one-layer model sits at 0)."""
    if num_layers < 1:
        raise ExplorerError("a profile needs at least one layer")
    return [i / (num_layers - 1) if num_layers > 1 else 0.0 for i in range(num_layers)]


def profile_of(pr: ProbeResult, model: str, model_type: str = "?", measure: str = "cosine",
               text: str = "", seconds: float = 0.0, **params: Any) -> LayerProfile:
    """The profile from an analysis already made (a probe of the model)."""
    from explorer.measure.measures import adjacent, get_measure

    info = get_measure(measure)
    y = adjacent(pr, measure, **params).tolist()        # (L,)
    return LayerProfile(model=model, model_type=model_type, measure=info.name,
                        higher_is_similar=info.higher_is_similar, num_layers=len(y),
                        x=relative_depth(len(y)), y=[float(v) for v in y], text=text,
                        num_tokens=pr.num_tokens, seconds=seconds)


class ProfileStore:
    """Profiles kept across model switches (the newest `capacity`), by model and settings: a
    store of the cache service (`explorer.core.cache`, "profiles"), not emptied with the model."""

    def __init__(self, capacity: int = 64) -> None:
        self._store: Store[LayerProfile] = Store("profiles", size=capacity)

    @property
    def capacity(self) -> int:
        return self._store.size

    def get(self, key: tuple) -> LayerProfile | None:
        return self._store.get(key)

    def put(self, key: tuple, profile: LayerProfile) -> None:
        self._store.put(key, profile)

    def profiles(self) -> list[LayerProfile]:
        return self._store.values()

    def clear(self) -> None:
        self._store.clear()


STORE = ProfileStore()   # the process's kept profiles (the CLI, the library, the app)


@dataclass(frozen=True)
class ProfileComparison:
    measure: str
    higher_is_similar: bool
    profiles: list[LayerProfile]
    reused: list[str]            # models whose profile was kept from before (no load)

    def to_dict(self) -> dict:
        return {"measure": self.measure, "higher_is_similar": self.higher_is_similar,
                "x": "relative depth: layer i of L at i / (L - 1)",
                "y": f"{self.measure} between layer i's input and output",
                "profiles": [p.to_dict() for p in self.profiles], "reused": list(self.reused)}


def parse_models(spec: str | Sequence[str]) -> list[str]:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    models = list(dict.fromkeys(s.strip() for s in items if s and s.strip()))
    if not models:
        raise ExplorerError("no model given; e.g. --models smollm2-135m,gemma3-270m")
    if len(models) > MAX_MODELS:
        raise ExplorerError(f"{len(models)} models given; at most {MAX_MODELS} side by side")
    return models


def failed_models(failed: list[tuple[str, ExplorerError]], fine: list[str]) -> ExplorerError:
    """One line naming each model that failed, with its own error, and the models that were
    fine (their profiles are kept, so asking again without the failed ones loads nothing):
    "'nonexistent-model-xyz' failed: could not load ...; gemma3-270m was fine (its profile is
    kept)". The error is of the first failure's class when all failed alike."""
    if len(failed) == 1 and not fine:
        return failed[0][1]                # the one model asked for: its own error says it
    said = "; ".join(f"'{spec}' failed: {exc}" for spec, exc in failed)
    if fine:
        many = len(fine) > 1
        said += (f"; {', '.join(fine)} {'were' if many else 'was'} fine ("
                 f"{'their profiles are' if many else 'its profile is'} kept)")
    elif len(failed) > 1:
        said += "; no model could be compared"
    kinds = {type(exc) for _, exc in failed}
    return (kinds.pop() if len(kinds) == 1 else ExplorerError)(said)


def compare_models(models: str | Sequence[str], *, measure: str = "cosine", text: str = "wiki",
                   seqlen: int = 128, samples: int = 32, bos: str = "auto",
                   skip_first: bool = True, params: dict | None = None,
                   device: str | None = None, dtype: str | None = None,
                   store: ProfileStore | None = None,
                   progress: Progress | None = None) -> ProfileComparison:
    """One adjacent-layer profile per model, each on relative depth 0..1.

    models: specs ("smollm2-135m,gemma3-270m" or a list): embedded names, hub ids, folders, .gguf.
    text, seqlen, samples, bos, skip_first: the calibration probe (as `similarity`).
    params: the measure's parameters. store: where profiles are kept (default: the process's).
    Each model not in the store becomes the resident model in turn (the previous one released).
    """
    from explorer.measure.measures import get_measure
    from explorer.probe.probe import probe
    from explorer.core.session import get_model
    from explorer.probe.text import load_texts

    specs = parse_models(models)
    info = get_measure(measure)
    full = info.resolve(params or {})          # refused before any model loads
    store = STORE if store is None else store
    texts = None
    out: list[LayerProfile] = []
    reused: list[str] = []
    failed: list[tuple[str, ExplorerError]] = []
    for k, spec in enumerate(specs):
        key = (spec, device or "auto", str(dtype or "auto"), info.name, text, seqlen, samples, bos,
               skip_first, tuple(sorted(full.items())))
        lo, hi = k / len(specs), (k + 1) / len(specs)
        kept = store.get(key)
        if kept is not None:
            out.append(kept)
            reused.append(spec)
            if progress:
                progress(Event(spec, hi, note="profile kept from before"))
            continue
        if progress:
            progress(Event("profiles", lo, step=k, total=len(specs), unit="models",
                           note=f"loading {spec}"))
        start = time.perf_counter()
        texts = texts or load_texts(text)      # a bad text is no model's fault: raised as is
        try:
            lm = get_model(spec, device=device, dtype=dtype)
            pr = probe(lm, texts.calibration, seqlen=seqlen, num_samples=samples, bos=bos,
                       skip_first=skip_first, progress=scaled(progress, lo, hi, spec))
        except ExplorerError as exc:     # the next models are still tried: one error names all
            failed.append((spec, exc))
            continue
        prof = profile_of(pr, spec, lm.config.model_type, info.name, texts.source,
                          time.perf_counter() - start, **full)
        del pr, lm                       # keep the floats, not the states or the model
        store.put(key, prof)
        out.append(prof)
    if failed:
        raise failed_models(failed, [p.model for p in out])
    if progress:
        progress(Event("profiles", 1.0, step=len(out), total=len(specs), unit="models"))
    return ProfileComparison(measure=info.name, higher_is_similar=info.higher_is_similar,
                             profiles=out, reused=reused)
