"""Controls generated from declared parameters (`explorer.core.params.Param`): no control is written by
hand for a method, a measure or a healing mode, so a new parameter appears in the app by itself.

Each control shows the parameter's `label` (its `name` is the CLI's) and its choices' words.

    bool            checkbox
    str + choices   dropdown of the allowed values
    int, float      number box (the allowed range is in its help line; `Param.parse` checks it);
                    a text box when the number may be none (empty = none)
    str, list, dict text box (a list as "3,7,10-12" or JSON, a dict as JSON)

`read(params, raw, owner)` turns the controls' values back into a validated parameter dict through
`params.resolve`, the same check the CLI and the API use, so a bad value is refused with its
one-line message before any work starts.
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

import gradio as gr

from explorer.core.errors import ParamError
from explorer.core.layer_lists import format_layers
from explorer.core.params import Param, resolve


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(x, int) for x in value):
        return format_layers(value)
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


_WORDS: dict[str, str] = {}       # registry_words(), made once (the registries are fixed)


def registry_words() -> dict[str, str]:
    """Registry keys that are not words, and the display names said instead: measures ("bi" ->
    "Block Influence (1 - cosine)"), methods ("shortgpt" -> "ShortGPT (Block Influence)") and
    healing modes ("layerwise" -> "Layer-wise distillation at the cuts"), each up to its first
    bracket or colon when that leaves a name."""
    if _WORDS:
        return _WORDS
    from explorer.heal import list_modes
    from explorer.measure.measures import MEASURES
    from explorer.plan import list_methods

    def short(title: str) -> str:
        return re.split(r" \(|: ", title)[0] or title
    names = {k: short(m.title) for k, m in MEASURES.items()}
    names |= {m.name: short(m.title) for m in list_methods()}
    names |= {m.name: short(m.title) for m in list_modes()}
    _WORDS.update({k: v for k, v in names.items() if k != v and k.lower() not in
                   ("cosine", "angular") and "-" not in k})
    return _WORDS


_LABELS: dict[str, str] = {}      # every method's and mode's snake_case parameter -> its label


def human(text: str, siblings: Sequence[Param] = (), mark: bool = True) -> str:
    """`text` (a help line, an error a toast shows, a progress note) in the app's words: registry
    keys by their display names, quoted or not ("heal mode 'layerwise'" -> "heal mode Layer-wise
    distillation at the cuts", "laco: ..." -> "LaCo: ..."), snake_case parameter names by their
    labels ("every check_every steps" -> "every *Check every* steps"): a sibling's (the other
    parameters of the same owner) first, else any method's or mode's. A plain word ("windows")
    stays English; code spans (`...`) stay as they are. mark: labels in *emphasis* (Markdown);
    False for plain text (a toast, a progress bar)."""
    if not _LABELS:
        from explorer.heal import list_modes
        from explorer.plan import list_methods

        for owner in [*list_methods(), *list_modes()]:
            for q in owner.params:
                if "_" in q.name:
                    _LABELS.setdefault(q.name, q.label)
    words = registry_words()
    labels = _LABELS | {q.name: q.label for q in siblings if "_" in q.name}

    def say(m: re.Match) -> str:
        w = m.group(2)
        if w in labels:
            return f"*{labels[w]}*" if mark else labels[w]
        if w in words:
            return words[w]
        return m.group(0)
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(part if part.startswith("`") else
                   re.sub(r"(?<![\w-])(')?([a-z][a-z0-9_]*)(?(1)'|(?![\w-]))", say, part)
                   for part in parts)


def allowed(p: Param) -> str:
    """What a control accepts, in words, where the control does not show it already (a menu
    shows its choices, a checkbox its two states); "" when it does."""
    if p.choices or p.type is bool:
        return ""
    text = p.allowed()
    return text.removesuffix(" or none") + "; empty: none" if p.optional else text


def control(p: Param, elem_id: str | None = None,
            siblings: Sequence[Param] = ()) -> gr.Component:
    """One control for `p`, showing its default, its help and what it allows; siblings: the
    other parameters of its owner, whose names its help may mention (said by their labels)."""
    rule = allowed(p)
    info = human(p.help, siblings) + (f" ({rule})" if rule else "")
    common = dict(label=p.label, info=info, elem_id=elem_id)
    if p.type is bool:
        return gr.Checkbox(value=bool(p.default), **common)
    if p.choices:
        choices = [(p.choice_label(c), c) for c in p.choices]
        return gr.Dropdown(choices + ([("none", None)] if p.optional else []), value=p.default,
                           **common)
    if p.type in (int, float) and not p.optional:
        return gr.Number(value=p.default, precision=0 if p.type is int else None, **common)
    # text, lists, dicts, and numbers that may be none (a number box cannot be empty: it shows 0)
    return gr.Textbox(value=_as_text(p.default), lines=1, placeholder="none" if p.optional
                      else None, **common)


def read(params: Sequence[Param], raw: Sequence[Any], owner: str) -> dict:
    """The validated parameters from the controls' values (in `params` order).

    Empty boxes mean "the default" for a parameter that cannot be None; a ParamError names the
    owner by its display name and the control by its label, what is allowed (choices by their
    words) and what was given: "LaCo: Acceptance threshold (T) must be a number in [0, 1]
    (got 'abc')"."""
    given = {}
    for p, value in zip(params, raw):
        if value is None or (isinstance(value, str) and not value.strip() and p.type is not str):
            if not p.optional:
                continue          # left empty: the default
            value = None
        given[p.name] = value
    try:
        return resolve(params, given, owner)
    except ParamError as exc:
        raise ParamError(refusal(exc)) from None


def refusal(exc: Exception) -> str:
    """The one line the app shows for `exc`: a refused parameter value said with its owner's
    display name, its label and the allowed values' words ("LaCo: Acceptance threshold (T) must
    be a number in [0, 1] (got 'abc')"), any other message through `human`."""
    p = getattr(exc, "param", None)
    if p is None:
        return human(str(exc), mark=False)
    rule = ("one of " + ", ".join(p.choice_label(c) for c in p.choices)) if p.choices \
        else allowed(p) or p.allowed()
    return f"{human(exc.owner, mark=False)}: {p.label} must be {rule} (got {exc.given!r})"


def whole_number(value: Any, label: str, lo: int, hi: int | None = None) -> int:
    """The whole number typed in the field labelled `label`, within [lo, hi].

    The app's number fields carry no Gradio minimum/maximum: Gradio's own check names no field
    ("Value -5 is less than minimum value 4."), logs a traceback, and ends the event before the
    steps chained to it, so the Stop button would stay active. Here a bad value is one
    `ParamError` line that names the field."""
    allowed = f"a whole number from {lo} to {hi}" if hi is not None else f"a whole number >= {lo}"
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ParamError(f"{label} must be {allowed} (got {value!r})") from None
    if not x.is_integer() or x < lo or (hi is not None and x > hi):
        shown = int(x) if x.is_integer() else x
        raise ParamError(f"{label} must be {allowed} (got {shown})")
    return int(x)
