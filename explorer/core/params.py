"""Declared parameters: the one description of a method's, measure's or healing mode's settings.

A component lists its parameters once, as a tuple of `Param`. From that tuple come the central
validation (`resolve`), the CLI's parameter help, the app's controls and the docs tables, so a new
parameter needs no edit anywhere else.

Values arrive as Python values (the API, the app) or as text (the CLI's `--param NAME=VALUE`);
`Param.parse` turns either into the declared type or raises a one-line `ParamError` that says what
was wrong and what is allowed.

Example:
    >>> T = Param("T", float, 0.45, "acceptance threshold on the mean cosine", min=0, max=1)
    >>> T.parse("0.3", "laco")
    0.3
    >>> T.parse("abc", "laco")
    ParamError: laco: T must be a number in [0, 1] (got 'abc')
    >>> resolve((T,), {"T": "0.5"}, "laco")
    {'T': 0.5}
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from explorer.core.errors import LayerError, ParamError
from explorer.core.layer_lists import parse_layers

TYPES = (int, float, str, bool, list, dict)   # list and dict: JSON values (layer lists, pairs)
NONE_WORDS = ("", "none", "null")             # text read as None for an optional parameter
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True)
class Param:
    """One parameter: its name, type, default, one line of help, and what values are allowed.

    type: int, float, str, bool, list or dict (list/dict values are JSON when given as text; a
    list may also be written in layer-list syntax, "3,7,10-12").
    choices: the allowed values (for str). min/max: inclusive range (for int and float).
    optional: None is allowed (and is what "", "none" or "null" mean as text).
    label: what the app and the docs call it, in words ("Held-out windows"); the CLI and the API
        keep `name`. Default: the name with its underscores as spaces, capitalised.
    choice_labels: words for the choices, shown by the app: (value, label) pairs, or a function
        of the value (for choices that are a live registry, such as the measures).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    optional: bool = False
    label: str = ""
    choice_labels: tuple | Callable[[Any], str] | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise TypeError(f"Param {self.name}: type must be one of {TYPES}, not {self.type}")
        if not self.label:
            words = self.name.replace("_", " ")
            object.__setattr__(self, "label", words[:1].upper() + words[1:])
        if self.default is not None or not self.optional:
            self.parse(self.default, "Param")   # a declaration error shows at import time

    def choice_label(self, value: Any) -> str:
        """The words for choice `value` (the value itself when it has none)."""
        labels = self.choice_labels
        if callable(labels):
            return labels(value)
        return dict(labels or ()).get(value, str(value))

    def allowed(self) -> str:
        """What the parameter accepts, in words: 'a number in [0, 1]', "one of 'a', 'b'"."""
        if self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.type is bool:
            text = "true or false"
        elif self.type in (int, float):
            noun = "an integer" if self.type is int else "a number"
            lo, hi = self.min, self.max
            if lo is not None and hi is not None:
                text = (f"{noun} from {_num(lo)} to {_num(hi)}" if self.type is int
                        else f"{noun} in [{_num(lo)}, {_num(hi)}]")
            elif lo is not None:
                text = f"{noun} >= {_num(lo)}"
            elif hi is not None:
                text = f"{noun} <= {_num(hi)}"
            else:
                text = noun
        elif self.type is list:
            text = "a list such as [3, 7]"
        elif self.type is dict:
            text = 'a JSON object such as {"k": 5}'
        else:
            text = "text"
        return text + (" or none" if self.optional else "")

    def parse(self, value: Any, owner: str) -> Any:
        """`value` (a Python value or text) as the declared type; ParamError if it does not fit.

        owner: who the parameter belongs to ("laco"), the first word of the error message.
        """
        given = value

        def bad() -> ParamError:
            error = ParamError(f"{owner}: {self.name} must be {self.allowed()} (got {given!r})")
            error.param, error.owner, error.given = self, owner, given
            return error

        if value is None or (isinstance(value, str) and self.optional
                             and value.strip().lower() in NONE_WORDS):
            if self.optional:
                return None
            raise bad()
        t = self.type
        if t is bool:
            if isinstance(value, bool):
                out = value
            elif isinstance(value, int) and value in (0, 1):
                out = bool(value)
            elif isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
                out = value.strip().lower() in TRUE_WORDS
            else:
                raise bad()
        elif t in (int, float):
            if isinstance(value, bool):
                raise bad()
            try:
                x = float(value.strip()) if isinstance(value, str) else float(value)
            except (TypeError, ValueError):
                raise bad() from None
            if not math.isfinite(x) or (t is int and not x.is_integer()):
                raise bad()
            if (self.min is not None and x < self.min) or (self.max is not None and x > self.max):
                raise bad()
            out = int(x) if t is int else x
        elif t is str:
            if not isinstance(value, str):
                raise bad()
            out = value.strip() if self.choices else value
        elif t is list:
            if isinstance(value, str):
                out = self._list_from_text(value, bad)
            elif isinstance(value, (list, tuple)):
                out = list(value)
            else:
                raise bad()
        else:   # dict
            value = _json(value, bad) if isinstance(value, str) else value
            if not isinstance(value, Mapping):
                raise bad()
            out = dict(value)
        if self.choices and out not in self.choices:
            raise bad()
        return out

    @staticmethod
    def _list_from_text(text: str, bad) -> list:
        text = text.strip()
        if text.startswith("["):
            out = _json(text, bad)
            if not isinstance(out, list):
                raise bad()
            return out
        try:
            return parse_layers(text)
        except LayerError:
            raise bad() from None


def _json(text: str, bad) -> Any:
    """`text` read as JSON; `bad()` raised when it is not JSON."""
    try:
        return json.loads(text)
    except ValueError:
        raise bad() from None


def resolve(params: Sequence[Param], given: Mapping[str, Any], owner: str) -> dict:
    """The full parameter set: every declared parameter, parsed from `given` or its default.

    Unknown names are refused with the known ones listed. The result keeps declaration order.
    """
    known = {p.name: p for p in params}
    unknown = sorted(set(given) - set(known))
    if unknown:
        names = ", ".join(known) or "none"
        raise ParamError(f"{owner} has no parameter {', '.join(unknown)}; its parameters: {names}")
    # defaults are copied: a method that edits its list or dict must not change the declaration
    return {name: p.parse(given[name], owner) if name in given else copy.deepcopy(p.default)
            for name, p in known.items()}


def describe(params: Sequence[Param]) -> list[dict]:
    """The declarations as plain rows (name, type, default, allowed, help): for help texts, docs
    tables and the app's controls."""
    return [{"name": p.name, "label": p.label, "type": p.type.__name__, "default": p.default,
             "allowed": p.allowed(), "help": p.help, "choices": p.choices, "min": p.min,
             "max": p.max, "optional": p.optional} for p in params]


def _show(value: Any) -> str:
    """A default as the user would type it: none, true, 0.45, [3, 7], "paper"."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def help_text(owners: Sequence[tuple[str, str, Sequence[Param]]]) -> str:
    """Plain-text help for the CLI: per owner (name, title, params), one line per parameter."""
    lines = []
    for name, title, params in owners:
        lines.append(f"  {name}: {title}")
        if not params:
            lines.append("      (no parameters)")
        for p in params:
            lines.append(f"      {p.name}={_show(p.default)}  {p.allowed()}: {p.help}")
    return "\n".join(lines)


def markdown_table(owners: Sequence[tuple[str, Sequence[Param]]], what: str = "method",
                   owner_column: bool = True) -> str:
    """A Markdown table of every owner's parameters (label and name, default, allowed values,
    help), for the docs; `explorer.cli.doc_tables` writes it between markers in docs/*.md.
    owner_column=False leaves out the owner's column (a table under the owner's own heading)."""
    first = f"| {what} " if owner_column else ""
    rows = [first + "| parameter | default | allowed | meaning |",
            ("|---" if owner_column else "") + "|---|---|---|---|"]
    for owner, params in owners:
        lead = f"| {owner} " if owner_column else ""
        if not params:
            rows.append(lead + "| (none) | | | |")
        for p in params:
            allowed = p.allowed()
            if p.choices:           # the values to type, as code
                allowed = allowed.replace(", ".join(repr(c) for c in p.choices),
                                          ", ".join(f"`{c}`" for c in p.choices))
            rows.append(f"{lead}| {p.label} (`{p.name}`) | `{_show(p.default)}` | "
                        f"{allowed} | {p.help.replace('|', '/')} |")
    return "\n".join(rows)
