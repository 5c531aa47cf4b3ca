"""What one browser session keeps (its `gr.State`): names, small lists and numbers, never tensors.

Every field of a session's state is declared here, and nowhere else:

    Session            the whole state of one browser tab (frozen: handlers return a changed copy
                       made with `dataclasses.replace`, so one session never edits another's)
      model, num_layers    the model spec the tab works on ("smollm2-135m", a path, a hub id)
      text, text_label     the text key in the registry ("wiki" or "user:<hash>") and its name
      analysis: Analysis   which probe the heatmaps come from (`ProbeKey`), the chosen measure,
                           and the last clicked cell; None before the first analysis
      plan: SessionPlan    what Apply measures and Export saves: recipe ops plus, for display,
                           the *original* layers removed or merged
      healed: Healed       the healing of the current plan's variant (None: not healed, or the
                           plan changed since); its ops are the plan's plus one "heal" op
      history: Tried, ...  the variants applied or healed in this tab (the last HISTORY_LIMIT)
      exports, exported    folders this tab saved (Overwrite may replace only these), the last one
      version              the number of the (plan, healing) pair: it goes up each time the plan's
                           ops change or the plan is healed, and every figure, table, generation,
                           export and report shown for the variant says which version it is of

The Compare views, Export and the report are all derived from `plan` and `heal`: one variant is
shown, saved and reported at a time. Two steps never change one session's state at once (the
second is refused in one line, `busy.py`), so a result of an older version cannot be written back.

The heavy values (probes, matrices, perplexities, variants) live in the process's caches
(`registry.py`), found again from these keys; the plan's ops rebuild the variant on the shared
model whenever it is needed.

Also here: turning the user's picks (layers to drop, blocks to merge, in original numbering) into
recipe ops, whose indices refer to the layer stack as it is at each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

from explorer.core.errors import LayerError
from explorer.core.layer_lists import format_groups, format_layers, parse_groups, parse_layers
from explorer.plan.manual import manual_ops
from explorer.heal.registry import HealResult

HISTORY_LIMIT = 100  # variants kept per session: session state must stay small
EXPORTS_LIMIT = 100  # folders remembered per session


class ProbeKey(NamedTuple):
    """What a probe is a function of: the registry caches probes under this key."""

    model: str
    text: str
    seqlen: int          # tokens per calibration window
    samples: int         # calibration windows
    max_tokens: int      # recorded tokens kept per boundary


@dataclass(frozen=True)
class Analysis:
    key: ProbeKey
    measure: str                                  # the measure the heatmaps show
    selected: tuple[int, int] | None = None       # the last clicked cell (a, b), a < b


@dataclass(frozen=True)
class SessionPlan:
    """The session's plan: recipe ops (what is replayed) and what they do in original layer
    numbering. Not `methods.Plan` (a method's result): here `removed` lists only the layers
    dropped, and the layers merged away are in `merged`."""

    method: str = "manual"
    params: dict[str, Any] = field(default_factory=dict)   # the method's full parameter set
    ops: list[dict] = field(default_factory=list)          # recipe ops (`explorer.apply.recipe`)
    removed: list[int] = field(default_factory=list)       # original layers dropped
    merged: list[list[int]] = field(default_factory=list)  # original layers merged (or replaced)
    notes: str = ""                                        # the method's own remarks
    layers_after: int | None = None        # a method's plan states its resulting size
    request: dict[str, Any] | None = None  # the size asked of a method: {"remove": n}/{"ratio": r}
    calib: tuple[int, int] | None = None   # (seqlen, samples) of the method's calibration windows

    @property
    def manual(self) -> bool:
        return self.method == "manual"

    def layers_removed(self, num_layers: int = 0) -> int:
        """Layers the plan takes away: drops, plus all but one layer of each merged block (a
        method's plan states its resulting size, which also covers replacements)."""
        if self.layers_after is not None and num_layers:
            return num_layers - int(self.layers_after)
        return len(self.removed) + sum(len(g) - 1 for g in self.merged)

    def describe(self) -> str:
        """What the plan changes, in original layer numbers: "drop layers 12, 14-15; merge
        layers 20-21" (the recipe ops count slots, which shift after each edit)."""
        parts = []
        if self.removed:
            word = "layer" if len(self.removed) == 1 else "layers"
            parts.append(f"drop {word} {format_layers(self.removed).replace(',', ', ')}")
        parts += [f"merge layers {format_layers(g)}" for g in self.merged]
        if not parts and self.ops:      # a method's edit that names no original layer
            parts = [op.get("summary", op.get("op", "?")) for op in self.ops]
        return "; ".join(parts) or "no change"


@dataclass(frozen=True)
class Healed:
    """A healed variant of the plan: the ops that replay it, and the healing's record
    (`explorer.heal.HealResult` without its variant: the one record of a healing, which the
    report reads as it is)."""

    record: HealResult            # mode, held-out figures, steps, seconds, curve, windows
    base_ops: list[dict]          # the plan's ops it healed
    ops: list[dict]               # base_ops + the "heal" op (`explorer.heal`)
    layers: str = ""              # the layers it changed, in original numbering, in words

    # the record's fields, read through (one record: nothing is copied)
    mode = property(lambda self: self.record.mode)
    steps = property(lambda self: self.record.steps)
    seconds = property(lambda self: self.record.seconds)
    held_out_before = property(lambda self: self.record.held_out_before)
    held_out_after = property(lambda self: self.record.held_out_after)
    curve = property(lambda self: self.record.curve)
    held_out = property(lambda self: self.record.held_out)
    seqlen = property(lambda self: self.record.seqlen)
    fitted = property(lambda self: self.record.fitted)
    made_worse = property(lambda self: self.record.made_worse)


@dataclass(frozen=True)
class Tried:
    """One variant applied in this session: a row of the history table and a point of its plot."""

    method: str
    change: str                  # the variant's own description
    layers_after: int
    removed: int                 # layers removed
    params_after: int            # parameters of the variant
    ppl_before: float
    ppl_after: float
    ops: list[dict]
    params: dict[str, Any]
    protocol: str
    healed: str = ""             # the healing mode, for a healed variant
    band_before: tuple[float, float] | None = None   # 95% band of each figure over the windows
    band_after: tuple[float, float] | None = None
    speedup_prefill: float | None = None   # measured speed-ups (explorer.evaluate.speed; ui/speed_panel)
    speedup_decode: float | None = None


@dataclass(frozen=True)
class Session:
    model: str | None = None
    num_layers: int = 0
    text: str = "wiki"
    text_label: str = "wiki"
    analysis: Analysis | None = None
    plan: SessionPlan = field(default_factory=SessionPlan)
    healed: Healed | None = None
    history: tuple[Tried, ...] = ()
    exports: tuple[str, ...] = ()
    exported: str | None = None
    version: int = 0

    def with_model(self, spec: str, num_layers: int) -> "Session":
        """The state after loading `spec`: what belonged to another model is dropped."""
        if spec == self.model:
            return self
        return replace(self, model=spec, num_layers=num_layers, analysis=None, plan=SessionPlan(),
                       healed=None, history=(), version=self.version + 1)

    def with_plan(self, plan: SessionPlan) -> "Session":
        """The state with a new plan: a healing of the old one no longer applies. The same ops
        typed again (or found by a method) keep the version and its healing."""
        if plan.ops == self.plan.ops:
            return replace(self, plan=plan)
        return replace(self, plan=plan, healed=None, version=self.version + 1)

    def with_healing(self, healed: "Healed") -> "Session":
        """The state once the plan's variant is healed (a new version)."""
        if healed.base_ops != self.plan.ops:
            raise LayerError("this healing belongs to another plan")
        return replace(self, healed=healed, version=self.version + 1)

    @property
    def heal(self) -> Healed | None:
        """The healing of the current plan, if any."""
        return self.healed if self.healed and self.healed.base_ops == self.plan.ops else None

    def ops(self) -> list[dict]:
        """The ops of what Export saves: the healed variant when the plan was healed."""
        return self.heal.ops if self.heal else self.plan.ops

    def tried(self, entry: Tried) -> "Session":
        return replace(self, history=(*self.history, entry)[-HISTORY_LIMIT:])

    def saved(self, path: str) -> "Session":
        return replace(self, exported=path, exports=(*self.exports, path)[-EXPORTS_LIMIT:])


def new_state(text: str = "wiki") -> Session:
    return Session(text=text, text_label=text)


def manual_plan(num_layers: int, drops: list[int], merges: list[list[int]],
                rule: str = "average") -> SessionPlan:
    """A plan that merges each block, then drops the given layers.

    All indices are original layer indices (`plan.manual.manual_ops` turns them into recipe ops).
    """
    ops = manual_ops(num_layers, drops, merges, rule)
    return SessionPlan(params={"merge_rule": rule} if merges else {}, ops=ops, removed=sorted(drops),
                merged=sorted(merges))


def plan_from_text(num_layers: int, drops: str | None, merges: str | None,
                   rule: str = "average") -> SessionPlan:
    """`manual_plan` from the typed fields ('3,7,10-12' and '10-12; 20,21')."""
    return manual_plan(num_layers, sorted(set(parse_layers(drops))), parse_groups(merges), rule)


def plan_fields(plan: SessionPlan) -> tuple[str, str]:
    """The manual fields (layers to drop, blocks to merge) that show `plan`: after a method
    planned, they hold its layers, so that editing them starts from what is on screen."""
    return format_layers(plan.removed), format_groups(plan.merged)


def toggle_block(drops_text: str, merges_text: str, start: int, stop: int,
                 action: str) -> tuple[str, str]:
    """Add the block of layers start..stop-1 to the drops or the merges (remove it if present)."""
    block = list(range(start, stop))
    drops = sorted(set(parse_layers(drops_text)))
    merges = parse_groups(merges_text)
    if action == "merge":
        if len(block) < 2:
            raise LayerError("a merge needs a block of at least two layers: click a cell two or "
                             "more steps away from the diagonal")
        merges = [g for g in merges if g != block] if block in merges else \
            [g for g in merges if not set(g) & set(block)] + [block]
    else:
        drops = sorted(set(drops) - set(block)) if set(block) <= set(drops) \
            else sorted(set(drops) | set(block))
    return format_layers(drops), format_groups(sorted(merges))
