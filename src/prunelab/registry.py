"""One small generic registry: explicit registration, loud failures, "did you mean"."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from prunelab.errors import PrunelabError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of plug-ins of one kind.

    >>> r = Registry[int]("number")
    >>> r.add("one", 1)
    >>> r.get("one")
    1
    >>> r.get("onw")
    Traceback (most recent call last):
    ...
    prunelab.errors.PrunelabError: unknown number 'onw' (did you mean 'one'?); valid: one
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> None:
        if name in self._items:
            raise PrunelabError(f"{self.kind} '{name}' is already registered")
        self._items[name] = item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of :meth:`add`."""

        def deco(item: T) -> T:
            self.add(name, item)
            return item

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, self._items, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise PrunelabError(
                f"unknown {self.kind} '{name}'{hint}; valid: {', '.join(self.names())}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def check_options(what: str, fn: Callable, options: Iterable[str], skip: int = 0) -> None:
    """One line naming the valid ones when ``options`` holds a name ``fn`` takes no keyword
    for (its first ``skip`` parameters are not options).

    >>> def load(path, seed=0, limit=None): ...
    >>> check_options("reader 'x'", load, ["seed", "limt"], skip=1)
    Traceback (most recent call last):
    ...
    prunelab.errors.PrunelabError: reader 'x' has no option 'limt' (did you mean 'limit'?); \
valid: seed, limit
    """
    valid = list(inspect.signature(fn).parameters)[skip:]
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise PrunelabError(f"{what} has no option '{key}'{hint}; valid: {', '.join(valid)}")
