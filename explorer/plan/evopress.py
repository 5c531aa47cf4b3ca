"""`evopress`: search whole drop sets of a fixed size by evolution (EvoPress, Sieberling et al.
2024, arXiv 2410.14649).

Greedy removal (SLEB) and similarity rankings (ShortGPT, angular) both score layers one at a time;
EvoPress observes that the damage of a set of removed layers is not the sum of its members' (a set
with lower per-layer errors can be worse), and searches sets as a whole:

- A (1 + lambda) evolution: one parent, a set of `remove` layers. Each generation draws `offspring`
  children, each the parent with one to three removed layers swapped for kept ones (the size stays
  fixed; 1, 2 or 3 swaps with probabilities 5/9, 3/9, 1/9, as min of two draws from 1..3).
- Selection in two stages: every child is scored on the first `first_windows` calibration windows
  and the `survivors` best go on to all `samples` windows, where the best replaces the parent only
  if it is strictly better (the parent's figure there is known, so it is the bar from the start).
- The search starts from the best, on all `samples` windows, of the plans of cheap methods
  (`starts`: angular's block and ShortGPT's layers by default) instead of random sets.

The fitness is the calibration NLL (the paper uses the KL divergence to the dense model's
predictions on Fineweb-Edu). Every figure comes from `PerplexitySearch` (ppl_search.py,
docs/search.md): children run from the parent's stored residual stream at the first slot they
change, and stop early on exact lower bounds, so the sets kept at each stage are those a full
evaluation of every child would keep. The draws come from `seed` only, so a search replays exactly;
a time budget (`seconds`) ends it after a whole generation, and the plan records the generations it
ran as `generations` (with `seconds` cleared), so its parameters replay the same search. Under
ranks (torchrun) every child is scored across the ranks' windows, and rank 0 decides each
generation's children and when the time budget is spent, so every rank runs the same generations.

Example:
    >>> plan = compress(lm, "evopress", remove=6, generations=16)
    >>> plan.removed, plan.notes
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from functools import partial

import torch

from explorer.core.errors import ParamError
from explorer.core.model import LoadedModel
from explorer.core.params import Param
from explorer.core.ranks import from_rank0
from explorer.core.variant import Variant
from explorer.plan.ppl_search import Candidate, PerplexitySearch
from explorer.plan.registry import Method, Plan, PlanContext, Report, get_method, register
from explorer.plan.sleb import EARLY_STOP

DropSet = tuple[int, ...]      # original indices of the removed layers, ascending


@dataclass
class EvoResult:
    """What an evolutionary search found, and how it got there."""

    removed: DropSet                      # the best drop set
    nll: float                            # its NLL summed over the final windows
    ppl: float                            # its calibration perplexity on the final windows
    start: str                            # the method whose plan started the search
    start_ppl: float                      # that plan's calibration perplexity
    generations: int                      # generations run
    improvements: list[tuple[int, float]] = field(default_factory=list)  # (generation, ppl)
    evaluated: int = 0                    # children scored (on the first windows at least)
    stopped: int = 0                      # of the scorings, those stopped early on a bound


@register
class EvoPress(Method):

    name = "evopress"
    examples = (dict(generations=2, seed=1),)    # a short search (the shared tests)
    title = "EvoPress (evolutionary search over drop sets)"
    paper = ("EvoPress: Towards Optimal Dynamic Model Compression via Evolutionary Search, "
             "arXiv 2410.14649")
    description = ("Searches for the best set of layers to remove as a whole, not one layer at a "
                   "time: starting from the best similarity plan, each generation makes a few "
                   "children by swapping removed and kept layers, scores them all on a little "
                   "calibration text, re-scores the best few on more, and keeps a child only if it "
                   "beats its parent. The paper finds that per-layer scores mislead (removing a "
                   "set of individually harmless layers can hurt more than another set) and that "
                   "this search beats greedy and similarity methods for depth pruning.")
    params = (
        Param("generations", int, 16, "generations to run: the search's budget (each scores "
              "`offspring` children)", min=1),
        Param("seconds", float, None, "time budget of the generations (the starting plans "
              "not counted): stop after the generation that passes it (the plan then records "
              "the generations run)", min=1, optional=True),
        Param("offspring", int, 16, "children per generation (lambda)", min=1),
        Param("survivors", int, 2, "children re-scored on all windows after the first "
              "selection", min=1),
        Param("first_windows", int, 4, "calibration windows of the first selection", min=1),
        Param("samples", int, None, "calibration windows of the final selection (default: all)",
              min=1, optional=True),
        Param("starts", str, "angular,shortgpt", "methods whose plans are scored as starting "
              "points, comma-separated (drop-only: `angular`, `shortgpt`, `tail`, `sleb` (slow))"),
        Param("seed", int, 0, "seed of the mutations: the same seed gives the same search",
              min=0),
        EARLY_STOP,
    )

    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        names = [s.strip() for s in params["starts"].split(",") if s.strip()]
        if not names:
            raise ParamError("evopress: starts must name at least one method (e.g. angular)")
        for name in names:
            if name == self.name:
                raise ParamError("evopress: starts cannot name evopress itself")
            get_method(name)                            # one line for an unknown name
        ids = ctx.input_ids
        final = ids if params["samples"] is None else ids[:params["samples"]]
        first = final[:params["first_windows"]]
        starts = []
        for k, name in enumerate(names):
            ctx.report(0.02 * k / len(names), f"{name}'s plan as a starting point")
            plan = get_method(name).plan(ctx, remove)
            if plan.merged or plan.variant.new_layers() or \
                    plan.variant.num_layers != ctx.lm.num_layers - remove:
                raise ParamError(f"evopress: {name}'s plan merges or replaces layers; a start "
                                 "must only drop whole layers (angular, shortgpt, tail, sleb)")
            starts.append((name, tuple(plan.removed)))
        r = evopress_search(ctx.lm, first, final, remove, starts,
                            generations=params["generations"], seconds=params["seconds"],
                            offspring=params["offspring"], survivors=params["survivors"],
                            seed=params["seed"], early_stop=params["early_stop"],
                            report=ctx.report)
        used = {**params, "generations": r.generations, "seconds": None}
        steps = "; ".join(f"{g}: {p:.4g}" for g, p in r.improvements) or "none"
        notes = (f"Removed layers {list(r.removed)}: calibration perplexity {r.ppl:.4g} on "
                 f"{final.shape[0]} x {final.shape[1]} tokens, from {r.start}'s plan at "
                 f"{r.start_ppl:.4g}, after {r.generations} generations of {params['offspring']} "
                 f"children (improvements by generation: {steps}; {r.stopped} of "
                 f"{r.evaluated} scorings stopped early on a bound).")
        if params["seconds"] is not None:
            notes += (f" The time budget ended it after {r.generations} generations; "
                      f"generations={r.generations} replays it.")
        return self.drop_plan(ctx, used, r.removed, {}, notes)


def mutate(parent: DropSet, num_layers: int, rng: random.Random) -> DropSet:
    """The parent with 1-3 removed layers swapped for kept ones (the set keeps its size)."""
    removed, kept = set(parent), [i for i in range(num_layers) if i not in parent]
    swaps = min(rng.randint(1, 3), rng.randint(1, 3), len(removed), len(kept))
    out = sorted(removed)
    for a, b in zip(rng.sample(out, swaps), rng.sample(kept, swaps)):
        removed.discard(a)
        removed.add(b)
    return tuple(sorted(removed))


def evopress_search(lm: LoadedModel, first_ids: torch.Tensor, final_ids: torch.Tensor, remove: int,
                    starts: list[tuple[str, DropSet]], *, generations: int,
                    seconds: float | None = None, offspring: int = 16, survivors: int = 2,
                    seed: int = 0, early_stop: bool = True,
                    report: Report | None = None) -> EvoResult:
    """EvoPress's (1 + lambda) search for the `remove` layers of `lm` to drop.

    first_ids (W1, T), final_ids (W, T): the windows of the first and the final selection.
    starts: (name, drop set) candidates for the first parent, the best on final_ids wins.
    A generation ends early only when every child of the parent was already beaten by it.
    """
    L = lm.num_layers
    report = report or (lambda *a, **k: None)
    identity = Variant.identity(lm)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    first = PerplexitySearch(lm, first_ids, abandon=early_stop)
    final = PerplexitySearch(lm, final_ids, abandon=early_stop)
    windows = final_ids.shape[0]

    def candidate(drop: DropSet) -> Candidate:
        return Candidate(drop, "layers " + ",".join(map(str, drop)), partial(identity.drop, drop))

    # the first parent: the best start on the final windows, scored from the dense model's states
    report(0.02, f"scoring {len(starts)} starting plans on {windows} windows")
    final.set_current(identity)
    unique = list(dict.fromkeys(d for _, d in starts))
    best, scored = final.step([candidate(d) for d in unique])
    parent, parent_total, parent_ppl = best.key, best.total, best.ppl
    start = next(name for name, d in starts if d == parent)
    result = EvoResult(parent, parent_total, parent_ppl, start, parent_ppl, 0)
    beaten: set[DropSet] = {s.key for s in scored}     # lost to the parent on the final windows
    current: dict[int, DropSet] = {id(final): ()}       # the set each search's states belong to

    def set_parent(search: PerplexitySearch) -> None:
        if current.get(id(search)) != parent:
            search.set_current(identity.drop(parent))
            current[id(search)] = parent

    def stage(search: PerplexitySearch, at: float, what: str, children: list[DropSet],
              **step_kw):
        """One selection stage of a generation: the children scored against the parent's
        states on `search`'s windows; returns `search.step`'s (best, scored)."""
        set_parent(search)
        report(at, what)
        best, scored = search.step([candidate(c) for c in children], **step_kw)
        result.evaluated += len(scored)
        result.stopped += sum(not s.complete for s in scored)
        return best, scored

    room = math.comb(L, remove) - 1                      # sets other than the parent
    for g in range(generations):
        children: list[DropSet] = []
        tries = 0
        while len(children) < min(offspring, room) and tries < 50 * offspring:
            tries += 1
            child = mutate(parent, L, rng)
            if child != parent and child not in beaten and child not in children:
                children.append(child)
        children = from_rank0(children)    # ranks: rank 0's draws (the same seed gives the same)
        if not children:
            break                          # every neighbour tried: the parent is a local optimum
        label = f"generation {g + 1}/{generations}"
        if len(children) > survivors:
            _, scored = stage(first, (g + 0.3) / generations,
                              f"{label}: {len(children)} children on {first_ids.shape[0]} "
                              "windows", children, keep=survivors)
            done = sorted((s for s in scored if s.complete and math.isfinite(s.total)),
                          key=lambda s: s.total)
            children = [s.key for s in done[:survivors]]
            final.hint = {s.key: s.total for s in done}   # best of the first stage runs first
        if children:
            best, scored = stage(final, (g + 0.7) / generations,
                                 f"{label}: {len(children)} survivors on {windows} windows",
                                 children, limit=parent_total)
            if best is not None and best.total < parent_total:
                beaten.add(parent)
                parent, parent_total, parent_ppl = best.key, best.total, best.ppl
                result.improvements.append((g + 1, parent_ppl))
                report((g + 1) / generations, f"{label}: layers {list(parent)} removed, "
                       "calibration ppl", figure=parent_ppl)
            beaten.update(s.key for s in scored if s.key != parent)
        result.generations = g + 1
        if seconds is not None and from_rank0(time.perf_counter() - t0 >= seconds):
            break                          # ranks: rank 0's clock decides for every rank
    result.removed, result.nll, result.ppl = parent, parent_total, parent_ppl
    return result
