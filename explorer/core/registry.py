"""One registry type for the named, pluggable parts: methods, measures, healing modes.

A `Registry` is a dict from name to component that adds registration, removal (for tests that
register an example) and a lookup whose error is one line listing the known names. `names()` is a
live view of the names, usable as a `Param`'s choices that follow the registry.

Example:
    >>> MEASURES = Registry("measure")
    >>> MEASURES.add("cosine", cosine_measure)
    >>> MEASURES.get_one("euclid")
    ExplorerError: unknown measure 'euclid'; known measures: cosine
"""

from __future__ import annotations

from typing import Generic, Iterator, Sequence, TypeVar

from explorer.core.errors import ExplorerError

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """name -> component, in registration order."""

    def __init__(self, kind: str, error: type[ExplorerError] = ExplorerError):
        super().__init__()
        self.kind = kind            # "method", "measure": the word used in messages
        self.error = error

    def add(self, name: str, item: T) -> T:
        """Register `item` under `name` (a second registration under a name replaces it)."""
        if not name:
            raise ValueError(f"a {self.kind} needs a name")
        self[name] = item
        return item

    def remove(self, name: str) -> None:
        self.pop(name, None)

    def get_one(self, name: str) -> T:
        """The component called `name`; a one-line error listing the known names otherwise."""
        if name not in self:
            raise self.error(f"unknown {self.kind} '{name}'; known {self.kind}s: "
                             f"{', '.join(self)}")
        return self[name]

    def names(self) -> Sequence[str]:
        """The registered names, read at each use (a later registration shows up)."""
        return _Names(self)


class _Names(Sequence):
    def __init__(self, registry: Registry):
        self._registry = registry

    def __getitem__(self, i):
        return list(self._registry)[i]

    def __len__(self) -> int:
        return len(self._registry)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._registry))

    def __contains__(self, name) -> bool:
        return name in self._registry

    def __repr__(self) -> str:
        return repr(tuple(self._registry))
