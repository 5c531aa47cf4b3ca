"""Shared pieces of the tabs: the build context and the error wrapper every handler uses."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from ..errors import ExplorerError, one_line
from .settings import UISettings

log = logging.getLogger("explorer.ui")


@dataclass
class Ctx:
    """What the tab builders share: settings, the session state, and components by name."""

    settings: UISettings
    state: gr.State
    c: dict[str, Any] = field(default_factory=dict)   # components other tabs wire to

    def __getitem__(self, name: str) -> Any:
        return self.c[name]


def user_errors(fn: Callable) -> Callable:
    """Show input problems as a visible error (gr.Error) and keep the app running.

    An ExplorerError's message is shown as it is; anything else is logged with its traceback and
    shown as one line, marked as unexpected.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except ExplorerError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:  # a bug: keep serving, say what happened
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(f"unexpected error ({type(exc).__name__}): {one_line(exc)}") from None
    return wrapper


def need_model(state: dict) -> None:
    if not state.get("model"):
        raise ExplorerError("no model loaded yet: pick one in the Model tab and press Load")


def need_analysis(state: dict) -> dict:
    if not state.get("analysis"):
        raise ExplorerError("no analysis yet: run it in the Analyse tab first")
    return state["analysis"]
