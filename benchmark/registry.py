"""One generic registry, used for learning rules and tasks alike.

Each registry is the single place where its entries are declared: a new rule or task is one new
file plus one ``add`` line, and it then appears in ``synapsebench list``, in suites and in the
contract tests.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Named(Protocol):
    @property
    def name(self) -> str: ...


InfoT = TypeVar("InfoT", bound=Named)


class UnknownNameError(KeyError):
    """A name that no entry of the registry carries; the message suggests the closest names."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        self.suggestion = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        hint = f"; {self.suggestion}" if close else ""
        self.message = f"unknown {kind} {name!r}{hint} (known: {', '.join(known)})"
        self.kind = kind
        self.name = name
        self.known = known
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[type, tuple[str, str, list[str]]]:
        # Errors cross process boundaries (Ray workers), so they must copy and pickle.
        return (type(self), (self.kind, self.name, self.known))


class Registry(Generic[InfoT]):
    """Name → info table. Adding a name twice raises; lookups suggest close names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, InfoT] = {}

    def add(self, info: InfoT) -> InfoT:
        name = info.name
        if name != name.lower() or not name.replace("_", "").isalnum():
            raise ValueError(f"{self.kind} names are lowercase snake_case, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = info
        return info

    def get(self, name: str) -> InfoT:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def items(self) -> Iterator[tuple[str, InfoT]]:
        for name in self.names():
            yield name, self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)
