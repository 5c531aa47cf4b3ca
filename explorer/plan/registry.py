"""The plan stage: one registry of merge and prune methods, each producing a `Variant` and a recipe.

A method is a small `Method` subclass in its own module under `explorer/plan/`, registered with
`@register`. It declares its name, paper, a paragraph for the app, and its parameters once, as
`params: tuple[Param, ...]` (`explorer.core.params`): the CLI help, the app's controls and the docs table
are generated from that declaration, and `Method.plan` validates every value through it.
`plan(ctx, remove, **params)` returns a `Plan`: the variant (the loaded model's weights are never
written), what was removed or merged (in original layer indices), and the scores it ranked by.

`remove` is always the number of layers by which the layer count shrinks; a method asked for K
removes exactly K or raises an ExplorerError that says why (`Method.plan` checks it).

Example:
    >>> from explorer.plan import compress, get_method, list_methods
    >>> [m.name for m in list_methods()]
    ['drop', 'tail', 'shortgpt', 'angular', 'mka', 'laco', 'streamline', 'come']
    >>> plan = compress(lm, "shortgpt", remove=6)          # calibration defaults to "wiki"
    >>> plan.removed, plan.variant.num_layers
    >>> plan.recipe().to_json()

Adding a method (one file under explorer/plan/, imported in `explorer/plan/__init__.py`,
plus its test; see docs/architecture.md):
    @register
    class MyMethod(Method):
        name = "mine"; title = "Mine"; paper = "arXiv ..."; description = "..."
        params = (Param("alpha", float, 0.5, "mixing weight", min=0, max=1),)
        def run(self, ctx, remove, params): ...           # -> Plan, e.g. self.drop_plan(...)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from explorer.apply.calibration import remember_text
from explorer.core.registry import Registry
from explorer.core.errors import LayerError
from explorer.core.model import LoadedModel
from explorer.core.progress import Event, Progress
from explorer.core.params import Param, help_text, markdown_table, resolve
from explorer.probe.probe import ProbeResult, calibration_windows, probe
from explorer.apply.recipe import Recipe
from explorer.core.variant import Variant


@dataclass
class Plan:
    """The result of a method: a variant ready for perplexity/export, and what it did."""

    method: str
    params: dict                       # the full parameter set used (defaults filled in)
    variant: Variant                   # the result; the loaded model itself is untouched
    scores: dict[str, list[float]]     # what the method ranked by, for display; may be empty
    notes: str                         # one or two sentences for the UI

    def recipe(self) -> Recipe:
        return Recipe.of(self.variant, self.method, self.params)

    @property
    def num_layers(self) -> int:
        return self.variant.num_layers

    @property
    def removed(self) -> list[int]:
        """Original layer indices dropped or merged away (`Variant.removed`)."""
        return self.variant.removed()

    @property
    def merged(self) -> list[list[int]]:
        """Blocks of original indices that one layer now stands for (`Variant.merged`)."""
        return self.variant.merged()


# `PlanContext.report`: report(fraction, note="", **event fields), what a search loop is handed.
Report = Callable[..., None]


@dataclass
class PlanContext:
    """What a method may use: the model, calibration text, and a cached probe of it."""

    lm: LoadedModel
    calibration: str                   # calibration text (disjoint from evaluation text)
    seqlen: int = 128
    num_samples: int = 32
    seed: int = 0
    progress: Progress | None = None
    calibration_source: str | None = None   # builtin source name ("wiki") when known: replay uses it
    stage: str = "plan"                # the progress events' stage: the method's name
    _ids: torch.Tensor | None = field(default=None, repr=False)
    _probe: ProbeResult | None = field(default=None, repr=False)

    @property
    def input_ids(self) -> torch.Tensor:
        """(B, T) calibration windows, cut once."""
        if self._ids is None:
            self._ids = calibration_windows(self.lm, self.calibration, self.seqlen,
                                            self.num_samples)
        return self._ids

    def probe(self, variant: Variant | None = None) -> ProbeResult:
        """Residual stream of the calibration windows through `variant` (cached for identity)."""
        if variant is None or variant.is_identity():
            if self._probe is None:
                self._probe = probe(self.lm, input_ids=self.input_ids, seed=self.seed)
            return self._probe
        return probe(self.lm, input_ids=self.input_ids, seed=self.seed, variant=variant)

    def report(self, fraction: float, note: str = "", **fields) -> None:
        """Report an event of this plan (`fields`: step, total, unit, loss, held_out, figure ...)."""
        if self.progress:
            self.progress(Event(fields.pop("stage", self.stage), fraction, note=note, **fields))

    def calibration_ref(self) -> dict:
        """How a replay can find this calibration text again (source name + fingerprint)."""
        return {"source": self.calibration_source, "sha256": remember_text(self.calibration),
                "seqlen": self.seqlen, "num_samples": self.num_samples, "seed": self.seed}


class Method:
    """Base class of the methods. Subclasses set the class attributes and implement `run`.

    params: the declared parameters (name, type, default, allowed values, one line of help).
    """

    name: str = ""
    title: str = ""
    paper: str = ""
    description: str = ""
    params: tuple[Param, ...] = ()
    # parameter sets the shared tests run this method with (tests/test_plan_common.py: a tiny
    # 6-layer model, 2 layers removed, every set a case); the default runs it with its defaults
    examples: tuple[dict, ...] = ({},)

    def resolve(self, params: dict) -> dict:
        """The full parameter set: declared defaults overridden by `params`, each value parsed and
        checked; a one-line ParamError for an unknown name or a bad value."""
        return resolve(self.params, params, self.name)

    def implied_remove(self, params: dict) -> int | None:
        """The layer count implied by the parameters (e.g. drop's layer list), if any."""
        return None

    def plan(self, ctx: PlanContext, remove: int, **params) -> Plan:
        return self.plans(ctx, [remove], **params)[remove]

    def plans(self, ctx: PlanContext, removes: Sequence[int], **params) -> dict[int, Plan]:
        """A plan for each size in `removes` (the measured table asks for 3, 6 and 9)."""
        p = self.resolve(params)
        for remove in removes:
            check_remove(remove, ctx.lm.num_layers)
        out = self.run_many(ctx, sorted(set(removes)), p)
        for remove, plan in out.items():
            got = self.removed_count(ctx, plan)
            if got != remove:   # each method raises its own reason first; this is the backstop
                raise LayerError(f"{self.name} removed {got} layers instead of the {remove} "
                                 f"asked for: {plan.notes}")
        return out

    def run(self, ctx: PlanContext, remove: int, params: dict) -> Plan:
        raise NotImplementedError

    def run_many(self, ctx: PlanContext, removes: list[int], params: dict) -> dict[int, Plan]:
        """Plans for several sizes: one `run` each, unless a method shares one search among
        them (blockpruner)."""
        return {remove: self.run(ctx, remove, params) for remove in removes}

    def removed_count(self, ctx: PlanContext, plan: Plan) -> int:
        """The layers `plan` removed, checked against `remove`: the drop in layer count. A method
        that removes parts of layers (blockpruner) counts them in layers' worth of parameters."""
        return ctx.lm.num_layers - plan.variant.num_layers

    def drop_plan(self, ctx: PlanContext, params: dict, layers: Sequence[int],
                  scores: dict[str, list[float]], notes: str) -> Plan:
        """The plan of a method that only deletes `layers` (original indices) of the model."""
        return Plan(self.name, params, Variant.identity(ctx.lm).drop(sorted(layers)), scores,
                    notes)


METHODS: Registry[Method] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add one instance of a `Method` subclass to `METHODS` under its name."""
    METHODS.add(cls.name, cls())
    return cls


def unregister(name: str) -> None:
    """Remove a method from the registry (tests that register an example method)."""
    METHODS.remove(name)


def get_method(name: str) -> Method:
    return METHODS.get_one(name)


def list_methods() -> list[Method]:
    return list(METHODS.values())


def methods_help() -> str:
    """Every registered method with its parameters, for the CLI's help."""
    return help_text([(m.name, m.title, m.params) for m in METHODS.values()])


def methods_table() -> str:
    """The Markdown table of every registered method's parameters (docs/methods.md)."""
    return markdown_table([(m.name, m.params) for m in METHODS.values()], "method")


def check_remove(remove: Any, num_layers: int) -> int:
    if not isinstance(remove, int) or isinstance(remove, bool) or not 1 <= remove < num_layers:
        raise LayerError(f"the number of layers to remove must be an integer from 1 to "
                         f"{num_layers - 1} for this {num_layers}-layer model (got {remove!r})")
    return remove


def layers_for_ratio(lm: LoadedModel, ratio: float) -> int:
    """Layers to remove so that about `ratio` of the model's parameters go (embeddings included,
    as LaCo and LLM-Streamline count it): round(ratio * total / mean parameters per layer)."""
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio < 1:
        raise LayerError(f"compression ratio must be between 0 and 1 (got {ratio!r})")
    layers = lm.original_layers  # not the live list: another thread may have a variant applied
    per_layer = sum(p.numel() for p in layers.parameters()) / len(layers)
    k = round(ratio * lm.num_parameters / per_layer)
    return max(1, min(len(layers) - 1, k))


def compress(lm: LoadedModel, method: str, *, remove: int | None = None,
             ratio: float | None = None, calibration: str | None = None, seqlen: int = 128,
             num_samples: int = 32, seed: int = 0, progress: Progress | None = None,
             calibration_source: str | None = None, **params) -> Plan:
    """Plan `method` on `lm`: give `remove` (layers) or `ratio` (parameters), not both.

    calibration: text to measure and fit on; None = the bundled "wiki" calibration half (disjoint
    from its evaluation half). Extra keyword arguments are the method's parameters.
    calibration_source: the builtin source the text came from ("wiki", "news"), if any: recipes of
    methods that fit weights can then be replayed in a later session.
    """
    m = get_method(method)
    if remove is not None and ratio is not None:
        raise LayerError("give either remove (layers) or ratio (parameters), not both")
    if ratio is not None:
        remove = layers_for_ratio(lm, ratio)
    if remove is None:
        remove = m.implied_remove(m.resolve(params))
        if remove is None:
            raise LayerError(f"method '{method}' needs remove (layers) or ratio (parameters)")
    source = calibration_source
    if calibration is None:
        from explorer.probe.text import load_texts

        calibration, source = load_texts("wiki").calibration, "wiki"
    ctx = PlanContext(lm, calibration, seqlen=seqlen, num_samples=num_samples, seed=seed,
                      progress=progress, calibration_source=source, stage=m.name)
    plan = m.plan(ctx, remove, **params)
    ctx.report(1.0, plan.notes)
    return plan
