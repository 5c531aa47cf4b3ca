"""`sleb`: remove, one at a time, the layer whose removal raises calibration perplexity least
(SLEB, Song et al. 2024, arXiv 2402.09025).

Each step drops every remaining layer in turn, measures the calibration perplexity of the result,
and removes the layer with the lowest; the next step re-scores every layer of the shortened model
(the redundancy of a layer changes once its neighbours are gone). As in the official code, the
first and the last layer are never candidates (`early_barrier`, `latter_barrier`) and ties go to
the earlier layer. The paper scores on 128 windows of 2048 WikiText-2 tokens; we score on the first
`samples` calibration windows (8 x 128 tokens by default, so that 6 of SmolLM2's 30 layers take
minutes on a CPU). The search runs from stored residual-stream states with exact early stops
on lower bounds of each candidate's NLL (explorer/plan/ppl_search.py, docs/search.md): the
layers chosen are those of a search that evaluates every candidate in full.

Example:
    >>> plan = compress(lm, "sleb", remove=6)
    >>> plan.removed, plan.scores["ppl when dropped"]     # first step: one figure per layer
    >>> sleb_search(PerplexitySearch(lm, ids, cache=False, abandon=False), 6)   # the plain loop
"""

from __future__ import annotations

from functools import partial

from explorer.core.errors import LayerError
from explorer.core.params import Param
from explorer.core.variant import Variant
from explorer.plan.ppl_search import Candidate, PerplexitySearch, Scored, SearchResult
from explorer.plan.registry import Method, Plan, PlanContext, Report, register

SAMPLES = Param("samples", int, 8, "calibration windows each candidate is scored on (the first "
                "ones of the calibration text; the paper uses 128 x 2048 tokens)",
                min=1, optional=True,
                label="Scoring windows")
EARLY_STOP = Param("early_stop", bool, True, "stop scoring a candidate once a lower bound of its NLL "
                "exceeds the best complete one's (same choice, faster; its score is then an "
                "estimate)",
                label="Stop scoring early")


def calibration_ids(ctx: PlanContext, samples: int | None):
    """(W, T) the calibration windows a search scores on: the first `samples` of the context's."""
    ids = ctx.input_ids
    return ids if samples is None else ids[:samples]


@register
class SLEB(Method):

    name = "sleb"
    title = "SLEB (perplexity-guided layer removal)"
    paper = ("SLEB: Streamlining LLMs through Redundancy Verification and Elimination of "
             "Transformer Blocks, arXiv 2402.09025")
    description = ("Tries removing each layer in turn and measures the model's perplexity on "
                   "calibration text; the layer whose removal hurts least goes, and the search "
                   "starts again on the shorter model, because a layer's redundancy changes once "
                   "its neighbours are gone. Choosing by the damage actually done, not by a "
                   "similarity score, beats similarity rankings in the paper.")
    params = (
        SAMPLES,
        Param("early_barrier", int, 1, "the first N layers are never removed (official code: 1)",
              min=0,
              label="Protected first layers"),
        Param("latter_barrier", int, 1, "the last N layers are never removed (official code: 1)",
              min=0,
              label="Protected last layers"),
        EARLY_STOP,
    )

    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        L = ctx.lm.num_layers
        early, late = params["early_barrier"], params["latter_barrier"]
        if L - early - late < remove:
            raise LayerError(f"sleb cannot remove {remove} of {L} layers while keeping the "
                             f"first {early} and the last {late}: only "
                             f"{max(0, L - early - late)} are candidates")
        ids = calibration_ids(ctx, params["samples"])
        search = PerplexitySearch(ctx.lm, ids, abandon=params["early_stop"])
        r = sleb_search(search, remove, early, late, ctx.report)
        return Plan(self.name, params, r.variant, r.scores,
                    f"Removed layers {r.order} in this order (calibration perplexity "
                    f"{r.ppl:.4g} on {ids.shape[0]} x {ids.shape[1]} tokens)."
                    + r.estimate_note())


def sleb_search(search: PerplexitySearch, remove: int, early: int = 1, late: int = 1,
                report: Report | None = None) -> SearchResult:
    """SLEB's loop on `search` (its model, windows and speed-ups): `remove` steps, each dropping
    the slot in [early, n - late) whose removal gives the lowest calibration NLL."""
    lm = search.lm
    L = lm.num_layers
    report = report or (lambda *a, **k: None)
    report(0.0, f"storing the residual stream of {search.ids.shape[0]} calibration windows")
    current = Variant.identity(lm)
    search.set_current(current)
    steps: list[list[Scored]] = []
    order: list[int] = []
    ppls: list[float] = []
    for step in range(remove):
        if step:
            search.set_current(current)
        slots = range(early, current.num_layers - late)
        cands = [Candidate(("layer", current.origin(j)), f"layer {current.origin(j)}",
                           partial(current.drop, [j])) for j in slots]

        def progress(k: int, label: str) -> None:
            report((step + k / len(cands)) / remove, f"removal {step + 1}/{remove}: scoring "
                   f"{label}", step=k + 1, total=len(cands), unit="candidates")

        best, scored = search.step(cands, progress)
        steps.append(scored)
        ppls.append(best.ppl)
        orig = best.key[1]
        order.append(orig)
        current = best.variant
        report((step + 1) / remove, f"removed layer {orig}, calibration ppl", figure=best.ppl)
    first = {s.key[1]: s.ppl for s in steps[0]}
    return SearchResult(current, order, best.ppl,
                        {"ppl when dropped": [first.get(i) for i in range(L)]}, steps, ppls)
