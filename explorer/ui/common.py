"""What the tabs share: the build context with every tab's components, and the error wrapper.

Each tab module's `build(ctx)` creates its components and returns them as one small dataclass
(declared here, so that every component another tab wires to is listed in one place); `wire(ctx)`
then connects events, reaching other tabs' components through `ctx.model`, `ctx.analyse`, ... A
long step (analysis, method plan, apply, generation) shows its progress on one *step line* next
to its button (`show_progress_on`), so one bar runs per step and an error marks only that line.
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from explorer.core.errors import ExplorerError, one_line
from explorer.ui import controls, stop
from explorer.ui.learn_tab import mode_title
from explorer.ui.settings import UISettings
from explorer.ui.state import Analysis, Session

log = logging.getLogger("explorer.ui")
STOP_LABEL = "■ Stop the running step"


@dataclass
class ModelParts:
    choice: gr.Dropdown          # embedded model
    custom: gr.Textbox           # ...or a hub id, folder or .gguf
    load_btn: gr.Button
    info: gr.Markdown            # the loaded model's facts
    source: gr.Radio             # text source
    own: gr.Group                # paste box and upload, shown for "own" only
    pasted: gr.Textbox
    upload: gr.File
    text_btn: gr.Button
    text_info: gr.Markdown
    dense_line: gr.Markdown      # the original model's figure, measured in the background


@dataclass
class AnalyseParts:
    seqlen: gr.Number
    samples: gr.Number
    run_btn: gr.Button
    status: gr.Markdown          # the analysis' step line
    heat: gr.HTML                # ClickPlot
    measure: gr.Dropdown
    measure_help: gr.Markdown
    profiles: gr.Plot
    layer_map: gr.Plot
    map_method: gr.Radio
    tokens: gr.Plot
    token_layers: gr.Dropdown
    token_method: gr.Radio
    token_btn: gr.Button
    models: gr.Textbox           # models side by side: specs, comma-separated
    models_btn: gr.Button
    models_line: gr.Markdown
    models_plot: gr.Plot
    damage: dict                 # the damage panel's components (ui/damage_panel.py)


@dataclass
class PlanParts:
    heat: gr.HTML                # ClickPlot
    action: gr.Radio             # a click drops or merges
    rule: gr.Radio               # merge rule
    drops: gr.Textbox
    merges: gr.Textbox
    update_btn: gr.Button
    clear_btn: gr.Button
    method: gr.Dropdown
    remove: gr.Number
    ratio: gr.Slider
    param_groups: dict[str, gr.Group]                  # method -> its parameter controls' group
    param_controls: list[tuple[str, Any, gr.Component]]  # (method, Param, control), all methods
    method_btn: gr.Button
    method_line: gr.Markdown     # the method's step line
    method_md: gr.Markdown       # what the chosen method does
    status: gr.Markdown          # what the plan does
    table: gr.Dataframe
    ops: gr.JSON
    apply_btn: gr.Button
    gate: Any = None             # ui/gate_panel.GateParts: plan within a perplexity gate


@dataclass
class HealParts:
    mode: gr.Dropdown
    param_groups: dict[str, gr.Group]                      # mode -> its controls' group
    param_controls: list[tuple[str, Any, gr.Component]]    # (mode, Param, control), all modes
    budget: gr.Group             # steps and seconds, shown for the modes that train
    steps: gr.Component
    seconds: gr.Component
    heal_btn: gr.Button
    line: gr.Markdown            # the healing's step line
    curve: gr.Plot               # loss and held-out perplexity as training goes


@dataclass
class ChecksParts:
    capability_btn: gr.Button
    capability_line: gr.Markdown
    capability: gr.Markdown
    tasks: gr.Textbox            # lm-eval task names or local task files
    limit: gr.Number
    tasks_btn: gr.Button
    tasks_line: gr.Markdown
    task_scores: gr.Markdown


@dataclass
class CompareParts:
    summary: gr.Markdown         # Apply's step line and its result
    details: gr.JSON
    heal: HealParts
    gens_line: gr.Markdown       # the generations' step line
    gens: gr.HTML
    checks: ChecksParts
    hist_plot: gr.Plot
    hist: gr.Dataframe
    clear_btn: gr.Button
    speed: Any = None            # ui/speed_panel.SpeedParts: measured speed-up, its plot


@dataclass
class ExportParts:
    tab: gr.Tab
    recipe: gr.DownloadButton
    name: gr.Textbox
    overwrite: gr.Checkbox
    save_btn: gr.Button
    save_md: gr.Markdown
    repo: gr.Textbox
    private: gr.Checkbox
    push_btn: gr.Button
    push_md: gr.Markdown
    cli: gr.Code
    report_btn: gr.Button        # builds the HTML report (explorer.report.build)
    report: gr.DownloadButton    # the built report, downloaded at once
    report_line: gr.Markdown     # the report's step line


@dataclass
class Ctx:
    """What the tab builders share: settings, the session state, and each tab's components."""

    settings: UISettings
    state: gr.State                       # holds a `state.Session`
    tabs: gr.Tabs | None = None
    stop_btn: gr.Button | None = None
    long_events: list = field(default_factory=list)   # the events the Stop button cancels
    model: ModelParts | None = None
    analyse: AnalyseParts | None = None
    plan: PlanParts | None = None
    compare: CompareParts | None = None
    export: ExportParts | None = None

    def long_step(self, trigger: Callable, fn: Callable, inputs: Any, outputs: Any, *,
                  continues: bool = False, last: bool = True, **kwargs: Any) -> Any:
        """Wire `fn` to `trigger` (a bound event method such as `button.click` or `event.then`)
        as a step the Stop button can end: Stop turns active before it starts and idle after it,
        whether it succeeded, failed or was stopped.

        Steps chained into one run (Apply, then the generations) keep Stop active in between:
        the first is wired with `last=False` (Stop goes idle only if it fails), the next with
        `continues=True` (it was active already). The enabling and the step are chained, never
        concurrent, so a quick failure cannot leave Stop active. Gradio runs a `.then` only after
        a success, so the idling hangs on `.success` and `.failure`; it leaves Stop active while
        another step of the page still runs (`stop.running`). Returns the step's event."""
        if not continues:
            trigger = trigger(_stop_active, None, [self.stop_btn], queue=False, api_name=False,
                              show_progress="hidden").then
        event = trigger(stop.tracked(fn), inputs, outputs, **kwargs)
        self.long_events.append(event)
        for after in ((event.success, event.failure) if last else (event.failure,)):
            after(_stop_idle, None, [self.stop_btn], queue=False, api_name=False,
                  show_progress="hidden")
        return event


def _stop_active() -> gr.Button:
    return gr.Button(STOP_LABEL, interactive=True, variant="stop")


def _stop_idle(request: gr.Request) -> gr.Button:
    """Stop after a step: idle, unless another step of this page still runs."""
    if stop.running(request) > 0:
        return _stop_active()
    return gr.Button(STOP_LABEL, interactive=False, variant="secondary")


def _shown(exc: Exception, where: str) -> gr.Error:
    """The gr.Error the page shows for `exc` (logged as one line for bad input, with its traceback
    for a bug)."""
    if isinstance(exc, stop.Stopped):       # what the user asked for: a notice, not an error
        log.info("stopped in %s", where)
        gr.Info(str(exc), title="Stopped")
        return gr.Error(str(exc), title="Stopped", visible=False, print_exception=False)
    if isinstance(exc, ExplorerError):
        log.warning("refused in %s: %s", where, one_line(exc))
        return gr.Error(controls.refusal(exc), print_exception=False)
    log.exception("unexpected error in %s", where)
    return gr.Error(f"unexpected error ({type(exc).__name__}): {one_line(exc)}",
                    print_exception=False)


def user_errors(fn: Callable) -> Callable:
    """Show input problems as a visible error (gr.Error) and keep the app running.

    An ExplorerError's message is shown as it is and logged as one line (no traceback: it is the
    user's input, not a bug); anything else is logged with its traceback and shown as one line,
    marked as unexpected. Works for generator handlers (streamed updates) too.
    """
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except Exception as exc:
                raise _shown(exc, fn.__name__) from None
        return stream

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as exc:
            raise _shown(exc, fn.__name__) from None
    return wrapper


def variant_words(state: Session) -> str:
    """Which variant the session's Export, Save and report write, as Compare shows it: "the
    healed variant (Layer-wise distillation at the cuts, 10 steps)", "the unhealed variant"."""
    h = state.heal
    if h is None:
        return "the unhealed variant"
    steps = f", {h.steps} steps" if h.steps else ""
    return f"the healed variant ({mode_title(h.mode)}{steps})"


def need_model(state: Session) -> str:
    if not state.model:
        raise ExplorerError("no model loaded yet: pick one in the Model tab and press Load")
    return state.model


def need_analysis(state: Session) -> Analysis:
    if state.analysis is None:
        raise ExplorerError("no analysis yet: run it in the Analyse tab first")
    return state.analysis
