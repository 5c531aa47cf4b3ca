"""Optional stages of the pipeline the UI uses when present: measures, manifold maps, methods.

The app still serves (loading, manual drops and merges, perplexity, export) when one of these modules
is missing from an installation; the controls that need it then say so instead of failing.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ExplorerError

_WHAT = {
    "measure": "the similarity measures",
    "manifold": "the manifold maps",
    "methods": "the compression methods",
}


def available(name: str) -> bool:
    try:
        module(name)
    except ExplorerError:
        return False
    return True


def module(name: str) -> ModuleType:
    """`explorer.<name>`, or an ExplorerError saying it is not part of this installation."""
    full = f"explorer.{name}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as exc:
        if exc.name in (full, "explorer." + name.split(".")[0]):
            raise ExplorerError(f"{_WHAT.get(name, full)} ({full}) are not available in this "
                                "installation") from None
        raise ExplorerError(f"{full} needs a missing package: {exc.name}") from None


def measures() -> dict:
    """MEASURES (name -> MeasureInfo), or {} when the module is absent."""
    try:
        return dict(module("measure").MEASURES)
    except ExplorerError:
        return {}


def methods() -> list:
    """Method descriptions from the registry (objects with name, title, paper, description,
    defaults), or [] when the module is absent."""
    try:
        mod = module("methods")
    except ExplorerError:
        return []
    found = mod.list_methods()
    return [mod.get_method(m) if isinstance(m, str) else m for m in found]
