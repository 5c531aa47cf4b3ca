"""The heal stage: repair a compressed variant so that it behaves like the dense model again.

A healing mode is a small `HealMode` subclass in its own module under `explorer/heal/`, registered
with `@register_mode`. It declares its parameters (`explorer.params.Param`) and whether it trains
(then it takes a budget in steps and/or seconds); `run(ctx, params)` returns the healed variant.
`heal(variant, mode, ...)` validates everything, builds the calibration data, runs the mode,
measures a held-out perplexity before and after, and records the healing as one recipe step
(`{"op": "heal", ...}`) that `explorer.recipe.replay` redoes.

Whatever a mode does, the loaded model is never written: a healed layer is a `NewLayer` whose module
is a copy owning new tensors only for what was changed (docs/healing.md).

Example:
    >>> from explorer.heal import heal
    >>> plan = compress(lm, "angular", remove=6)
    >>> r = heal(plan.variant, "closed-form")                   # seconds, no training
    >>> r = heal(plan.variant, "distill", seconds=240, progress=print)
    >>> r.variant, r.held_out_before, r.held_out_after, r.to_dict()

Adding a mode:
    @register_mode
    class Mine(HealMode):
        name = "mine"; title = "..."; paper = "..."; description = "..."; trains = True
        params = COMMON_PARAMS + (Param("lr", float, 1e-4, "learning rate", min=0),)
        def run(self, ctx, params): ...           # -> HealOutcome
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..components import Registry
from ..errors import LayerError, ParamError
from ..load import LoadedModel, Progress
from ..params import Param, markdown_table, resolve
from ..recipe import register_op
from ..variant import NewLayer, Variant
from .cuts import find_cuts
from .data import HealData, held_out_ppl

COMMON_PARAMS: tuple[Param, ...] = (
    Param("seqlen", int, 128, "tokens per calibration window", min=8, max=8192,
          label="Tokens per window"),
    Param("windows", int, 128, "calibration windows fitted on (first part of the calibration "
          "text)", min=1, max=100_000,
          label="Fitted windows"),
    Param("held_out", int, 8, "further calibration windows never fitted on: the held-out "
          "perplexity shown while healing", min=1, max=10_000,
          label="Held-out windows"),
    Param("skip_first", bool, True, "leave each window's first position (massive activation) out "
          "of the fits",
          label="Leave out each window's first token"),
)


def with_defaults(params: tuple[Param, ...], **defaults: Any) -> tuple[Param, ...]:
    """`params` with some defaults changed (a mode that wants more windows than COMMON_PARAMS)."""
    unknown = set(defaults) - {p.name for p in params}
    if unknown:
        raise ValueError(f"no parameter {unknown}")
    return tuple(dataclasses.replace(p, default=defaults[p.name]) if p.name in defaults else p
                 for p in params)


@dataclass
class HealContext:
    """What a mode may use: the model, the variant to heal, the data and the budget."""

    lm: LoadedModel
    variant: Variant
    data: HealData
    params: dict
    seed: int = 0
    steps: int | None = None            # training budget: optimiser steps (None: no limit)
    seconds: float | None = None        # training budget: wall time (None: no limit)
    progress: Progress | None = None
    held_out_ppl: float = float("nan")  # the latest held-out perplexity (shown in progress)

    @property
    def first(self) -> int:
        """First position of each window used by fits (1 = skip the massive activation)."""
        return 1 if self.params.get("skip_first", True) else 0

    def report(self, fraction: float, message: str) -> None:
        if self.progress:
            self.progress(max(0.0, min(1.0, fraction)), message)


@dataclass
class HealOutcome:
    """What `HealMode.run` returns; `heal` wraps it into a `HealResult`."""

    variant: Variant                    # the healed variant (steps as given; heal adds its own)
    steps: int                          # optimiser steps done (0 for closed form)
    seconds: float
    history: list[dict]                 # [{"step", "loss", "held_out_ppl"?, "seconds"}]
    details: dict = field(default_factory=dict)
    notes: str = ""
    replay: dict = field(default_factory=dict)   # parameters that make a replay exact (the
    #                                              schedule lengths a time budget fixed)


@dataclass
class HealResult:
    """A healed variant and how it got there."""

    mode: str
    params: dict
    variant: Variant
    cuts: list[str]                     # where the variant departed from the dense model
    healed_slots: list[int]             # slots that now hold healed layers
    steps: int
    seconds: float
    held_out_before: float              # perplexity on held-out calibration windows
    held_out_after: float
    history: list[dict]
    details: dict
    notes: str

    @property
    def made_worse(self) -> bool:
        """Healing raised the held-out perplexity (or gave NaN): the unhealed variant is better."""
        return not self.held_out_after <= self.held_out_before

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "variant"}
        d["num_layers"] = self.variant.num_layers
        d["made_worse"] = self.made_worse
        d["summary"] = self.variant.steps[-1]["summary"]
        return d


class HealMode:
    """Base class of the healing modes; subclasses set the attributes and implement `run`."""

    name: str = ""
    title: str = ""
    paper: str = ""
    description: str = ""
    params: tuple[Param, ...] = COMMON_PARAMS
    trains: bool = False                # takes a budget (steps and/or seconds)
    default_steps: int | None = None    # budget when neither steps nor seconds is given

    def run(self, ctx: HealContext, params: dict) -> HealOutcome:
        raise NotImplementedError

    def info(self) -> dict:
        from ..params import describe

        return {"name": self.name, "title": self.title, "paper": self.paper,
                "description": self.description, "trains": self.trains,
                "params": describe(self.params)}


MODES: Registry[HealMode] = Registry("heal mode", ParamError)


def register_mode(cls: type[HealMode]) -> type[HealMode]:
    """Class decorator: add one instance of a `HealMode` subclass to `MODES` under its name."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    MODES.add(cls.name, cls())
    return cls


def get_mode(name: str) -> HealMode:
    return MODES.get_one(name)


def list_modes() -> list[HealMode]:
    return list(MODES.values())


def modes_table() -> str:
    """The Markdown table of every healing mode's parameters (docs/healing.md)."""
    return markdown_table([(m.name, m.params) for m in MODES.values()], "mode")


def check_budget(mode: HealMode, steps: Any, seconds: Any) -> tuple[int | None, float | None]:
    """Validated (steps, seconds); a one-line ParamError for anything else."""
    if not mode.trains:
        if steps is not None or seconds is not None:
            raise ParamError(f"heal mode '{mode.name}' trains nothing: a budget (steps, seconds) "
                             "does not apply to it")
        return None, None
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0):
        raise ParamError(f"heal steps must be a positive integer (got {steps!r})")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                or not math.isfinite(seconds) or seconds <= 0):
        raise ParamError(f"heal seconds must be a positive number (got {seconds!r})")
    if steps is None and seconds is None:
        steps = mode.default_steps
    return steps, (float(seconds) if seconds is not None else None)


def heal(variant: Variant, mode: str = "closed-form", *, calibration: str | None = None,
         calibration_source: str | None = None, steps: int | None = None,
         seconds: float | None = None, seed: int = 0, progress: Progress | None = None,
         **params: Any) -> HealResult:
    """Heal `variant` with `mode` on calibration text; the loaded model is never modified.

    calibration: text to fit on; None = the bundled "wiki" calibration half (disjoint from its
        evaluation half). calibration_source: the builtin source it came from, if any (a recipe
        can then be replayed in a later session).
    steps / seconds: training budget of the training modes (whichever ends first).
    progress: called often with (fraction, message incl. loss and held-out perplexity); an
        exception raised from it (the app's Stop) ends the healing, nothing kept.
    Extra keyword arguments are the mode's parameters (`get_mode(mode).params`).
    """
    from ..methods.registry import remember_text

    m = get_mode(mode)
    p = resolve(m.params, params, f"heal mode '{mode}'")
    steps, seconds = check_budget(m, steps, seconds)
    cuts = find_cuts(variant)
    lm = variant.lm
    if calibration is None:
        from ..text import load_texts

        calibration, calibration_source = load_texts("wiki").calibration, "wiki"
    start = time.perf_counter()
    torch.manual_seed(seed)
    data = HealData.build(lm, calibration, seqlen=p["seqlen"], windows=p["windows"],
                          held_out=p["held_out"], owner=f"heal mode '{mode}'")
    ctx = HealContext(lm, variant, data, p, seed, steps, seconds, progress)
    ctx.report(0.0, f"heal {mode}: held-out perplexity before healing")
    before = ctx.held_out_ppl = held_out_ppl(lm, variant, data.held_out)
    out = m.run(ctx, p)
    after = held_out_ppl(lm, out.variant, data.held_out)
    healed = [k for k, (old, new) in enumerate(zip(variant.slots, out.variant.slots))
              if isinstance(new, NewLayer) and new is not old]
    if not healed:
        raise LayerError(f"heal mode '{mode}' changed no layer of this variant")
    summary = f"heal {mode}" + (f" ({out.steps} steps)" if m.trains else "") + \
        f": slots {','.join(map(str, healed))}"
    step = {"op": "heal", "mode": mode, "params": {**p, **out.replay}, "steps": out.steps,
            "seed": seed,
            "calibration": {"source": calibration_source, "sha256": remember_text(calibration)},
            "summary": summary}
    result = Variant(lm, out.variant.slots, variant.steps + (step,))
    ctx.report(1.0, f"heal {mode}: held-out perplexity {before:.4g} -> {after:.4g}")
    r = HealResult(mode=mode, params=p, variant=result, cuts=[c.describe() for c in cuts],
                   healed_slots=healed, steps=out.steps,
                   seconds=round(time.perf_counter() - start, 2), held_out_before=before,
                   held_out_after=after, history=out.history, details=out.details,
                   notes=out.notes)
    if r.made_worse:             # say it first: the caller may keep the unhealed variant
        r.notes = (f"Healing made the held-out perplexity worse ({before:.4g} -> {after:.4g}): "
                   f"the unhealed variant is better on text it was not fitted on; try another "
                   f"mode or setting. " + r.notes)
    return r


@register_op("heal")
def _replay_heal(v: Variant, op: dict, lm: LoadedModel) -> Variant:
    """Redo a recorded healing: same mode, parameters, calibration text, seed and step count."""
    from ..methods.registry import find_calibration

    ref, params = op.get("calibration"), op.get("params")
    if not isinstance(ref, dict) or not isinstance(params, dict) or not isinstance(op.get("mode"),
                                                                                  str):
        raise LayerError("heal op needs 'mode', 'params' and 'calibration'")
    mode = get_mode(op["mode"])
    steps = op.get("steps") if mode.trains else None
    if mode.trains and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise LayerError("heal op needs 'steps': the number of optimiser steps it made")
    seed = op.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise LayerError("heal op 'seed' must be an integer")
    text = find_calibration(ref)
    r = heal(v, op["mode"], calibration=text, calibration_source=ref.get("source"), steps=steps,
             seed=seed, **params)
    return Variant(r.variant.lm, r.variant.slots, v.steps + (dict(op),))
