"""`blockpruner`: remove attention and MLP sub-blocks one at a time, by calibration perplexity
(BlockPruner, Zhong et al. 2024, arXiv 2406.10594; sub-layer pruning as in FinerCut, arXiv
2405.18218).

Every layer is two blocks, attention and MLP, each added to the residual stream. Each step drops
every remaining block in turn (`Variant.drop_part`), measures the calibration perplexity, and
removes the block with the lowest; a layer that loses both blocks is deleted. It stops when the
parameters removed reach `remove` layers' worth (no block left fits in what remains, so it lands
within one attention block below: a quarter layer on SmolLM2), the budget the layer-pruning methods
get. The official code deletes a given number of blocks and converts that to a pruning ratio.

In a plain transformers export a dropped block is a zeroed output projection: the file keeps its
parameters and the model its FLOPs; only fully dropped layers save anything there (docs/search.md).

Example:
    >>> plan = compress(lm, "blockpruner", remove=6)
    >>> plan.notes        # the blocks dropped, in order
"""

from __future__ import annotations

from functools import partial

import torch.nn as nn

from explorer.core.errors import LayerError
from explorer.core.model import LoadedModel
from explorer.core.params import Param
from explorer.core.variant import PARTS, NewLayer, Variant
from explorer.plan.ppl_search import Candidate, PerplexitySearch, Scored, SearchResult
from explorer.plan.registry import Method, Plan, PlanContext, Report, register
from explorer.plan.sleb import EARLY_STOP, SAMPLES, calibration_ids


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def part_sizes(lm: LoadedModel) -> dict[tuple[str, int], int]:
    """Parameters of each block: ("attn", i) is layer i's attention module, ("mlp", i) the rest
    of the layer (its MLP and the norms), so the two add up to the whole layer."""
    out = {}
    for i, layer in enumerate(lm.original_layers):
        attn_path = getattr(lm.arch, PARTS["attn"]).rpartition(".")[0]
        attn = _count(layer.get_submodule(attn_path))
        out[("attn", i)], out[("mlp", i)] = attn, _count(layer) - attn
    return out


def removed_parameters(variant: Variant) -> int:
    """Parameters of the original layers that `variant` dropped, whole or by blocks."""
    lm = variant.lm
    sizes = part_sizes(lm)
    kept = {variant.origin(i) for i in range(variant.num_layers)}
    total = sum(sizes[("attn", i)] + sizes[("mlp", i)] for i in range(lm.num_layers)
                if i not in kept)
    for s in variant.new_layers():
        total += sum(sizes[(part, s.like)] for part in s.parts_dropped)
    return total


def layer_parameters(lm: LoadedModel) -> float:
    return _count(lm.original_layers) / lm.num_layers


@register
class BlockPruner(Method):

    name = "blockpruner"
    title = "BlockPruner (attention and MLP blocks by perplexity)"
    paper = "BlockPruner: Fine-grained Pruning for Large Language Models, arXiv 2406.10594"
    description = ("Treats each layer as two blocks, attention and MLP, and tries removing each "
                   "block in turn, keeping the removal that raises the perplexity of calibration "
                   "text least; then searches again, until as many parameters are gone as "
                   "`remove` whole layers hold. Finer than dropping layers: a layer can keep its "
                   "MLP and lose its attention. In a plain transformers export a dropped block is "
                   "a zeroed projection that still costs its FLOPs.")
    params = (
        SAMPLES,
        Param("parts", str, "both", "which blocks are candidates: attention, MLP or both "
              "(official code: mha, mlp, mix)", choices=("both", "attn", "mlp"),
              label="Candidate blocks", choice_labels=(
                ('both', 'attention and MLP'),
                ('attn', 'attention'),
                ('mlp', 'MLP'),
              )),
        EARLY_STOP,
    )

    def removed_count(self, ctx: PlanContext, plan: Plan) -> int:
        return round(removed_parameters(plan.variant) / layer_parameters(ctx.lm))

    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        return self.run_many(ctx, [remove], params)[remove]

    def run_many(self, ctx: PlanContext, removes: list[int], params: dict) -> dict[int, Plan]:
        """One search at the largest size; the smaller sizes follow its choices while they fit
        (`blockpruner_search(follow=...)`), the same plans as separate runs."""
        lm = ctx.lm
        for part in PARTS:
            if getattr(lm.arch, PARTS[part]) is None:
                raise LayerError(f"blockpruner needs each layer's {part} output projection; the "
                                 f"{lm.arch.family} adapter does not name it")
        kinds = list(PARTS) if params["parts"] == "both" else [params["parts"]]
        ids = calibration_ids(ctx, params["samples"])
        search = PerplexitySearch(lm, ids, abandon=params["early_stop"])
        big = max(removes)
        results = {big: blockpruner_search(search, big, kinds, ctx.report)}
        for remove in removes:
            if remove != big:
                results[remove] = blockpruner_search(search, remove, kinds, ctx.report,
                                                     follow=results[big])
        return {remove: self._plan(ctx, params, remove, results[remove], ids)
                for remove in removes}

    def _plan(self, ctx: PlanContext, params: dict, remove: int, r: SearchResult,
              ids) -> Plan:
        worth = removed_parameters(r.variant) / layer_parameters(ctx.lm)
        if round(worth) != remove:
            raise LayerError(f"blockpruner could remove only {worth:.2f} layers' worth of "
                             f"{params['parts']} blocks, not {remove}: choose parts=both or a "
                             "smaller remove")
        both = r.variant.removed()
        listing = ", ".join(f"{p} {i}" for p, i in r.order)
        notes = (f"Dropped {listing} in this order ({worth:.2f} layers' worth of parameters"
                 + (f"; layers {both} lost both blocks" if both else "")
                 + f"; calibration perplexity {r.ppl:.4g} on {ids.shape[0]} x {ids.shape[1]} "
                 "tokens). A dropped block exports as a zeroed projection that keeps its FLOPs."
                 + r.estimate_note())
        return Plan(self.name, params, r.variant, r.scores, notes)


def blockpruner_search(search: PerplexitySearch, remove: int, kinds: list[str] = list(PARTS),
                       report: Report | None = None,
                       follow: SearchResult | None = None) -> SearchResult:
    """BlockPruner's loop on `search`: drop the block ("attn" or "mlp", of `kinds`) whose removal
    gives the lowest calibration NLL, while a block still fits in `remove` layers' parameters.

    follow: the result of the same search (same model, windows and kinds) with a larger budget.
    Its choices are taken without scoring while each fits this budget, since a block that was the
    best of a larger candidate set and fits here is also the best here; the search proper resumes
    at the first choice that does not fit. So several sizes cost about one search.
    """
    lm = search.lm
    L = lm.num_layers
    report = report or (lambda *a, **k: None)
    sizes = part_sizes(lm)
    per_layer = layer_parameters(lm)
    budget = remove * per_layer
    report(0.0, f"storing the residual stream of {search.ids.shape[0]} calibration windows")
    current = Variant.identity(lm)
    if follow is None:
        search.set_current(current)
    stale = follow is not None             # search's states are not those of `current`
    gone: list[tuple[str, int]] = []
    steps: list[list[Scored]] = []
    ppls: list[float] = []
    removed = 0
    while True:
        room = budget - removed
        cands = []
        for j in range(current.num_layers):
            orig = current.origin(j)
            slot = current.slots[j]
            other = slot.parts_dropped if isinstance(slot, NewLayer) else ()
            for part in kinds:
                if (part, orig) in gone or sizes[(part, orig)] > room:
                    continue
                if other and current.num_layers == 1:
                    continue              # the model's last layer is never emptied
                cands.append(Candidate((part, orig), f"{part} {orig}",
                                       partial(current.drop_part, j, part)))
        if not cands:
            break
        t = len(steps)
        if follow is not None and t < len(follow.order) and \
                follow.order[t] in {c.key for c in cands}:
            key = follow.order[t]
            chosen = next(c for c in cands if c.key == key).build()
            steps.append(follow.steps[t])
            ppls.append(follow.ppls[t])
            stale = True
        else:
            follow = None
            if stale or steps:
                search.set_current(current)   # the states of the model edited last

            def progress(k: int, label: str) -> None:
                report(min(0.99, (removed + k / len(cands) * sizes[cands[0].key]) / budget),
                       f"removal {t + 1}: scoring {label}", step=k + 1, total=len(cands),
                       unit="candidates")

            best, scored = search.step(cands, progress)
            key, chosen = best.key, best.variant
            steps.append(scored)
            ppls.append(best.ppl)
            stale = False
        part, orig = key
        gone.append(key)
        removed += sizes[key]
        current = chosen
        report(min(0.99, removed / budget), f"dropped {part} {orig}, calibration ppl",
               figure=ppls[-1])
    first = {s.key: s.ppl for s in steps[0]} if steps else {}
    scores = {f"{k} ppl when dropped": [first.get((k, i)) for i in range(L)] for k in kinds}
    return SearchResult(current, gone, ppls[-1] if ppls else float("nan"), scores, steps,
                        ppls)
