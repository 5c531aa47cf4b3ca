"""Run heavy steps on a GPU where the host lends one per call (Hugging Face ZeroGPU).

On a ZeroGPU Space the `spaces` package is importable and `spaces.GPU` attaches a GPU for the
duration of each decorated call, which then runs in another process: such functions must take and
return plain, picklable values (names, recipe ops, numbers, CPU tensors) and rebuild what they need
(the variant) inside. Elsewhere `gpu` returns the function unchanged. Nothing here touches CUDA, so
importing the app never initialises it in the main process.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

ZERO_GPU = importlib.util.find_spec("spaces") is not None


def gpu(fn: F | None = None, *, duration: int | None = None):
    """Decorator: `spaces.GPU` on Hugging Face Spaces, the plain function elsewhere."""
    def wrap(f: F) -> F:
        if not ZERO_GPU:
            return f
        import spaces

        return spaces.GPU(duration=duration)(f) if duration else spaces.GPU(f)
    return wrap(fn) if fn is not None else wrap
