"""The heal stage: repair a compressed variant so that it behaves like the dense model again.

A healing mode is a small `HealMode` subclass in its own module under `explorer/heal/`, registered
with `@register_mode`. It declares its parameters (`explorer.core.params.Param`) and whether it trains
(then it takes a budget in steps and/or seconds); `run(ctx, params)` returns the healed variant.
`heal(variant, mode, ...)` validates everything, builds the calibration data, runs the mode,
measures a held-out perplexity before and after, and records the healing as one recipe step
(`{"op": "heal", ...}`) that `explorer.apply.recipe.replay` redoes.

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


from explorer.apply.calibration import find_calibration, remember_text, text_digest
from explorer.core.registry import Registry
from explorer.core.errors import LayerError, ParamError, TextError
from explorer.core.model import LoadedModel
from explorer.core.progress import Event, Progress
from explorer.core.params import Param, markdown_table, resolve
from explorer.core.ranks import agree
from explorer.apply.fitted import record as record_fitted
from explorer.apply.recipe import register_op
from explorer.core.variant import NewLayer, Variant
from explorer.heal.cuts import find_cuts
from explorer.heal.data import HealData, held_out_ppl

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
    stage: str = "heal"                 # the progress events' stage: "heal <mode>"
    stop_at: int | None = None          # replay: run exactly this many steps, keep them (no
    #                                     keep-best choice; heal.train.train)

    @property
    def first(self) -> int:
        """First position of each window used by fits (1 = skip the massive activation)."""
        return 1 if self.params.get("skip_first", True) else 0

    def report(self, fraction: float, note: str = "", **fields) -> None:
        """Report an event of this healing (`fields`: step, total, unit, loss, held_out, figure ...)."""
        if self.progress:
            self.progress(Event(fields.pop("stage", self.stage), fraction, note=note, **fields))


@dataclass
class HealOutcome:
    """What `HealMode.run` hands back to `heal`: the mode's own part of the work. Not a record
    of a healing: `heal` measures around it (cuts, held-out perplexity before and after, the
    keep-or-not decision) and makes the one record, a `HealResult`; nothing outside heal/ sees
    this."""

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
    """The one record of a healing: the healed variant and how it got there. The report, the
    command line's JSON and the app all read it. `variant` is None where the record travels
    without tensors (`to_dict()` and back with `from_dict`: the app's session state, a report
    rebuilt from a job's result)."""

    mode: str
    params: dict
    variant: Variant | None
    cuts: list[str]                     # where the variant departed from the dense model
    healed_slots: list[int]             # slots that now hold healed layers
    healed_head: bool                   # the variant now has its own, trained vocabulary head
    steps: int
    seconds: float
    held_out_before: float              # perplexity on held-out calibration windows
    held_out_after: float
    history: list[dict]
    details: dict
    notes: str
    calibration: str = "wiki"           # the healing text: a builtin source name or "user"
    kept_start: bool = False            # the healing made things worse: `variant` is the start

    @property
    def made_worse(self) -> bool:
        """Healing raised the held-out perplexity (or gave NaN): the unhealed variant is better
        (and `heal` returned it: kept_start)."""
        return not self.held_out_after <= self.held_out_before

    @property
    def curve(self) -> tuple[tuple[int, float, float | None], ...]:
        """(step, loss, held-out perplexity) per recorded training step (empty: closed form)."""
        return tuple((h["step"], h["loss"], h.get("held_out_ppl")) for h in self.history)

    @property
    def held_out(self) -> int:
        """Held-out calibration windows the before/after figures were measured on ..."""
        return int(self.params.get("held_out", 0))

    @property
    def seqlen(self) -> int:
        """... of this many tokens ..."""
        return int(self.params.get("seqlen", 0))

    @property
    def fitted(self) -> int:
        """... after the windows fitted on."""
        return int(self.params.get("windows", 0))

    def to_dict(self) -> dict:
        """The record without the variant (JSON-ready), plus the variant's layer count and
        summary when it has one."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "variant"}
        d["made_worse"] = self.made_worse
        if self.variant is not None:
            d["num_layers"] = self.variant.num_layers
            d["summary"] = self.variant.steps[-1]["summary"]
        return d

    @staticmethod
    def from_dict(d: dict) -> "HealResult":
        """The record of a `to_dict()`, without its variant."""
        names = {f.name for f in dataclasses.fields(HealResult)} - {"variant"}
        return HealResult(variant=None, **{k: v for k, v in d.items() if k in names})


class HealMode:
    """Base class of the healing modes; subclasses set the attributes and implement `run`."""

    name: str = ""
    title: str = ""
    paper: str = ""
    description: str = ""
    params: tuple[Param, ...] = COMMON_PARAMS
    trains: bool = False                # takes a budget (steps and/or seconds)
    default_steps: int | None = None    # budget when neither steps nor seconds is given
    # parameter sets the shared tests heal with (tests/test_heal.py: a tiny model with two layers
    # dropped, small calibration data, 2 steps unless a set names `steps`); default: the defaults
    examples: tuple[dict, ...] = ({},)

    def run(self, ctx: HealContext, params: dict) -> HealOutcome:
        raise NotImplementedError


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


def heal(variant: Variant, mode: str = "closed-form", *, text: str | None = None,
         calibration: str | None = None, calibration_source: str | None = None, steps: int | None = None,
         seconds: float | None = None, seed: int = 0, progress: Progress | None = None,
         stop_at: int | None = None, **params: Any) -> HealResult:
    """Heal `variant` with `mode` on calibration text; the loaded model is never modified.

    text: the healing text by name: "wiki", "news", "mix" (their calibration halves, disjoint
        from the evaluation halves) or a .txt path (the whole file); see `healing_text`.
    calibration: or the text to fit on itself; neither = the bundled "wiki" calibration half. calibration_source: the builtin source it came from, if any (a recipe
        can then be replayed in a later session).
    steps / seconds: training budget of the training modes (whichever ends first).
    progress: called often with an `Event` (a training step's carries its loss and the held-out
        perplexity); an exception raised from it (a cancel token) ends the healing, nothing kept.
    stop_at: replay only: run exactly this many optimiser steps of the recorded schedule and keep
        them (no keep-best choice); the budget is then ignored.
    Extra keyword arguments are the mode's parameters (`get_mode(mode).params`).

    A healing never ends worse than its start: when the healed variant's held-out perplexity is
    above the unhealed one's (or NaN), the result holds the unhealed variant (`kept_start`) and
    says so first in its notes; the recipe records that, so a replay does not heal again.
    """
    m = get_mode(mode)
    p = resolve(m.params, params, f"heal mode '{mode}'")
    steps, seconds = check_budget(m, steps, seconds)
    cuts = find_cuts(variant)
    lm = variant.lm
    if text is not None:
        if calibration is not None:
            raise ParamError("give the healing text by name (text=) or as text (calibration=), "
                             "not both")
        calibration, calibration_source = healing_text(text)
    if calibration is None:
        calibration, calibration_source = healing_text("wiki")
    if not isinstance(calibration, str) or not calibration.strip():
        raise TextError("the healing text is empty: give calibration text (wiki, news, mix or "
                        "a file of your own)")
    start = time.perf_counter()
    agree((lm.num_layers, lm.num_parameters, text_digest(calibration), p["seqlen"],
           p["windows"], p["held_out"], seed), "model, healing text and settings")
    data = HealData.build(lm, calibration, seqlen=p["seqlen"], windows=p["windows"],
                          held_out=p["held_out"], owner=f"heal mode '{mode}'")
    ctx = HealContext(lm, variant, data, p, seed, steps, seconds, progress, stage=f"heal {mode}",
                      stop_at=stop_at if m.trains else None)
    ctx.report(0.0, "held-out perplexity before healing")
    before = ctx.held_out_ppl = held_out_ppl(lm, variant, data.held_out)
    out = m.run(ctx, p)
    ctx.report(1.0, "held-out perplexity after healing")
    after = held_out_ppl(lm, out.variant, data.held_out)
    healed = [k for k, (old, new) in enumerate(zip(variant.slots, out.variant.slots))
              if isinstance(new, NewLayer) and new is not old]
    new_head = out.variant.head is not None and out.variant.head is not variant.head
    if not healed and not new_head:
        raise LayerError(f"heal mode '{mode}' changed no layer of this variant")
    worse = not after <= before
    what = ", ".join([f"slots {','.join(map(str, healed))}"] * bool(healed) +
                     ["the head"] * new_head)
    summary = f"heal {mode}" + (f" ({out.steps} steps)" if m.trains else "") + \
        (": made it worse, the unhealed layers kept" if worse else f": {what}")
    step = {"op": "heal", "mode": mode, "params": {**p, **out.replay}, "steps": out.steps,
            "seed": seed,
            "calibration": {"source": calibration_source, "sha256": remember_text(calibration)},
            "summary": summary}
    if worse:                    # a replay only records it: no healing to redo
        step["kept"] = "start"
    kept = variant if worse else out.variant
    result = dataclasses.replace(kept, steps=variant.steps + (step,))
    record_fitted(variant, result)          # a recipe saved now carries the healed layers
    ctx.report(1.0, f"held-out ppl before healing {before:.4g}", held_out=after)
    r = HealResult(mode=mode, params=p, variant=result, cuts=[c.describe() for c in cuts],
                   healed_slots=[] if worse else healed, healed_head=new_head and not worse,
                   steps=out.steps,
                   seconds=round(time.perf_counter() - start, 2), held_out_before=before,
                   held_out_after=after, history=out.history, details=out.details,
                   notes=out.notes, calibration=calibration_source or "user", kept_start=worse)
    if worse:                    # say it first
        r.notes = (f"Healing made the held-out perplexity worse ({before:.4g} -> {after:.4g}): "
                   f"the unhealed variant is kept (it is better on text the healing was not "
                   f"fitted on); try another mode or setting. " + r.notes)
    return r


def healing_text(source: str) -> tuple[str, str | None]:
    """(text to fit on, builtin source name or None) for a healing text given by name: a builtin
    source's calibration half ("wiki", "news", "mix", "wikitext2"), or a user's .txt file whole
    (its source None: a recipe fitted on it replays only in the session that has it)."""
    from explorer.probe.text import BUILTIN_SOURCES, load_texts

    t = load_texts(source)
    if t.source in BUILTIN_SOURCES:
        return t.calibration, t.source
    return t.whole or t.calibration, None


def replay_heal(v: Variant, op: dict) -> HealResult:
    """Redo a recorded healing of `v`: same mode, parameters, calibration text, seed and step
    count. The result's variant records `op` itself as its last step (the HTML report also shows
    the replayed healing's figures)."""
    ref, params = op.get("calibration"), op.get("params")
    if not isinstance(ref, dict) or not isinstance(params, dict) or not isinstance(op.get("mode"),
                                                                                  str):
        raise LayerError("heal op needs 'mode', 'params' and 'calibration'")
    mode = get_mode(op["mode"])
    if op.get("kept") == "start":     # the healing made things worse and was not kept
        return dataclasses.replace(v, steps=v.steps + (dict(op),))
    steps = op.get("steps") if mode.trains else None
    if mode.trains and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 0):
        raise LayerError("heal op needs 'steps': the number of optimiser steps it kept")
    seed = op.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise LayerError("heal op 'seed' must be an integer")
    text = find_calibration(ref)
    r = heal(v, op["mode"], calibration=text, calibration_source=ref.get("source"), seed=seed,
             stop_at=steps, **params)
    return dataclasses.replace(r, variant=dataclasses.replace(r.variant,
                                                              steps=v.steps + (dict(op),)))


@register_op("heal", fitted=True)
def _replay_heal(v: Variant, op: dict, lm: LoadedModel) -> Variant:
    """Redo a recorded healing (`replay_heal`), when its fitted layers are not at hand."""
    return replay_heal(v, op).variant
