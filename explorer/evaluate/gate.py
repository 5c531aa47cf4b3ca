"""A quality gate: the largest removal whose perplexity stays within R times the dense model's.

Instead of asking "how bad is the model with K layers removed?", a user often asks "how many layers
can go while perplexity stays within R x dense?" (R = 1.5: at most 50% worse). `quality_gate` finds
that K for one method, healed or not:

1. try K = 1; when even one layer breaks the gate, stop with `GateError` (the CLI exits 2 with the
   figure that broke it);
2. double K (2, 4, 8, ...) while the gate holds, up to L - 1 layers;
3. bisect between the largest K that held and the smallest that broke it.

Each try plans the method at K (one `PlanContext`, so the calibration probe is taken once for all
sizes), heals the plan when a healing mode is given, and measures perplexity on the evaluation
text. Every measurement goes through `perplexity`, so the dense figure is computed once (or read
from the dense cache, explorer/core/dense_cache.py) and each variant runs from the stored dense states
before its first change; healing reuses its cached dense targets (explorer/heal/data.py) from one
size to the next. The search assumes perplexity grows with K, which holds for every method's plans
on the models measured here (docs/methods.md); the report lists every size tried with its figure,
so a non-monotone case shows. About log2(L) + log2(K) tries: 6-7 for a 30-layer model.

Example:
    >>> r = quality_gate(lm, "angular", 1.5, heal="layerwise", heal_steps=50)
    >>> r.remove, r.ppl, r.ratio, [t.remove for t in r.tries]
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any


from explorer.core.errors import ExplorerError
from explorer.evaluate.perplexity import perplexity
from explorer.core.model import LoadedModel
from explorer.core.progress import Event, Progress
from explorer.core.variant import Variant


class GateError(ExplorerError):
    """The gate is not a number above 1, or even one layer removed breaks it."""


def check_gate(value: Any) -> float:
    """R as a float greater than 1, or a one-line GateError."""
    try:
        r = float(value)
    except (TypeError, ValueError):
        raise GateError(f"the perplexity gate must be a number greater than 1, e.g. 1.5 (got "
                        f"'{value}')") from None
    if not math.isfinite(r) or r <= 1:
        raise GateError(f"the perplexity gate must be a number greater than 1, e.g. 1.5 (got "
                        f"{value}): it is the most perplexity may grow, as a multiple of the "
                        "dense model's")
    return r


@dataclass
class GateTry:
    """One size tried."""

    remove: int
    ppl: float | None              # the gated figure (healed when healing), None when it failed
    ppl_unhealed: float | None
    ratio: float | None            # ppl / dense
    passed: bool
    seconds: float
    reason: str = ""               # why a try gave no figure (the method refused the size)

    def to_dict(self) -> dict:
        return {"remove": self.remove, "ppl": self.ppl, "ppl_unhealed": self.ppl_unhealed,
                "ratio": None if self.ratio is None else round(self.ratio, 4),
                "passed": self.passed, "seconds": round(self.seconds, 2), "reason": self.reason}


@dataclass
class GateResult:
    method: str
    max_ratio: float
    heal: str | None
    dense_ppl: float
    remove: int                    # the largest removal within the gate
    ppl: float                     # its figure (healed when healing)
    ppl_unhealed: float
    variant: Variant               # the chosen variant (healed when healing)
    plan: Any                      # the method's Plan at `remove` (explorer.plan.Plan)
    protocol: str
    tries: list[GateTry] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ratio(self) -> float:
        return self.ppl / self.dense_ppl

    def to_dict(self) -> dict:
        return {"method": self.method, "max_ppl_ratio": self.max_ratio, "heal": self.heal,
                "dense_ppl": self.dense_ppl, "remove": self.remove, "ppl": self.ppl,
                "ppl_unhealed": self.ppl_unhealed, "ratio": round(self.ratio, 4),
                "num_layers": self.variant.num_layers,
                "tries": [t.to_dict() for t in sorted(self.tries, key=lambda t: t.remove)],
                "protocol": self.protocol, "seconds": round(self.seconds, 2)}


def quality_gate(lm: LoadedModel, method: str, max_ppl_ratio: float, *,
                 evaluation: str | None = None, evaluation_source: str = "wiki",
                 calibration: str | None = None, calibration_source: str | None = None,
                 seqlen: int = 512, max_tokens: int | None = 16384, bos: str = "auto",
                 calib_seqlen: int = 128, calib_samples: int = 32, seed: int = 0,
                 heal: str | None = None, heal_steps: int | None = None,
                 heal_seconds: float | None = None, heal_params: dict | None = None,
                 max_remove: int | None = None, progress: Progress | None = None,
                 **params: Any) -> GateResult:
    """The largest number of layers `method` removes with perplexity <= max_ppl_ratio x dense.

    evaluation / calibration: texts (None: the bundled wiki halves, disjoint); seqlen,
    max_tokens, bos: the perplexity protocol. heal, heal_steps, heal_seconds, heal_params: heal
    every tried plan with this mode and budget (`explorer.heal.heal`) and gate the healed figure.
    max_remove: the largest size tried (default L - 1). Extra keyword arguments are the method's
    parameters. Raises GateError when even one layer removed breaks the gate.
    """
    from explorer.heal import heal as heal_variant
    from explorer.heal.registry import check_budget, get_mode
    from explorer.plan import get_method
    from explorer.plan.registry import PlanContext

    R = check_gate(max_ppl_ratio)
    m = get_method(method)
    params = m.resolve(params)
    if heal is not None:          # refused before any planning
        from explorer.core.params import resolve

        mode = get_mode(heal)
        resolve(mode.params, dict(heal_params or {}), f"heal mode '{mode.name}'")
        check_budget(mode, heal_steps, heal_seconds)
    if evaluation is None or calibration is None:
        from explorer.probe.text import load_texts

        texts = load_texts("wiki")
        if evaluation is None:
            evaluation, evaluation_source = texts.evaluation, texts.source
        if calibration is None:
            calibration, calibration_source = texts.calibration, texts.source
    L = lm.num_layers
    top = min(max_remove or L - 1, L - 1)
    if top < 1:
        raise GateError(f"the model has {L} layer(s): nothing can be removed")
    t_start = time.perf_counter()

    def report(message: str) -> None:
        if progress:
            progress(Event("gate", min(0.99, len(tries) / (2 * math.log2(L + 1) + 1)),
                           note=message))

    def ppl(variant: Variant | None):
        return perplexity(lm, evaluation, variant=variant, seqlen=seqlen, max_tokens=max_tokens,
                          bos=bos, source=evaluation_source)

    tries: list[GateTry] = []
    report("the dense figure")
    dense = ppl(None)
    ctx = PlanContext(lm, calibration, seqlen=calib_seqlen, num_samples=calib_samples, seed=seed,
                      calibration_source=calibration_source)
    found: dict[int, tuple[Any, Variant, float, float]] = {}

    def attempt(k: int) -> bool:
        report(f"{method} at {k} removed" + (f", healed ({heal})" if heal else ""))
        t0 = time.perf_counter()
        try:
            plan = m.plan(ctx, k, **params)
            before = ppl(plan.variant)
            variant, figure = plan.variant, before.ppl
            if heal is not None:
                variant = heal_variant(plan.variant, heal, calibration=calibration,
                                       calibration_source=calibration_source, steps=heal_steps,
                                       seconds=heal_seconds, seed=seed,
                                       **(heal_params or {})).variant
                figure = ppl(variant).ppl
        except ExplorerError as exc:        # the method refuses this size, or the model broke
            if k == 1:                      # not a size problem: the settings are (one line)
                raise
            tries.append(GateTry(k, None, None, None, False, time.perf_counter() - t0,
                                 reason=str(exc)))
            return False
        passed = figure <= R * dense.ppl
        tries.append(GateTry(k, figure, before.ppl, figure / dense.ppl, passed,
                             time.perf_counter() - t0))
        if passed:
            found[k] = (plan, variant, figure, before.ppl)
        return passed

    if not attempt(1):
        t = tries[0]
        why = t.reason or (f"perplexity {t.ppl:.4g} = {t.ratio:.3f} x dense {dense.ppl:.4g}")
        healed = f" and healed ({heal})" if heal else ""
        raise GateError(f"even 1 layer removed by {method}{healed} breaks the gate of {R:g} x "
                        f"dense: {why}")
    lo, hi = 1, None                       # lo held; hi broke (None: not found yet)
    while hi is None and lo < top:
        k = min(2 * lo, top)
        if attempt(k):
            lo = k
        else:
            hi = k
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            lo = mid
        else:
            hi = mid
    plan, variant, figure, unhealed = found[lo]
    report(f"{lo} removed is the largest within {R:g} x dense")
    if progress:
        progress(Event("gate", 1.0, figure=figure, note=f"{lo} layers removed "
                                                         f"({figure / dense.ppl:.3f} x dense), perplexity"))
    return GateResult(method=m.name, max_ratio=R, heal=heal, dense_ppl=dense.ppl, remove=lo,
                      ppl=figure, ppl_unhealed=unhealed, variant=variant, plan=plan,
                      protocol=dense.protocol(), tries=tries,
                      seconds=time.perf_counter() - t_start)
