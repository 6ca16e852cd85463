"""One small generic registry, used for every axis (teachers, students, methods, attacks, datasets).

A name is either registered exactly (``"resnet18"``) or as a prefix that takes an argument after a colon
(``"imagefolder"`` resolves ``"imagefolder:/data/CRC100K"``). Unknown names raise ``ValueError`` listing
the valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories (or classes). ``kind`` names the axis in error messages.

    Each entry may carry metadata (a dataclass or dict declared at registration, the way timm attaches
    pretrained configs to a model entry point), e.g. a teacher's licence; :meth:`metadata` returns it.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._usage: dict[str, str] = {}
        self._metadata: dict[str, Any] = {}
        self._takes_arg: set[str] = set()
        self._optional_arg: set[str] = set()

    def register(
        self, name: str, *, takes_arg: bool | str = False, usage: str | None = None, metadata: Any = None
    ) -> Callable[[T], T]:
        """Decorator: register ``obj`` under ``name``.

        ``takes_arg=True`` marks a prefix name such as ``"imagefolder"`` whose spec is ``"imagefolder:PATH"``;
        ``takes_arg="optional"`` accepts both ``"name"`` and ``"name:ARG"``. ``usage`` is how the name is
        written with its argument (default ``"name:ARG"`` for prefixes); ``metadata`` is stored with the entry.
        """

        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            if takes_arg:
                self._takes_arg.add(name)
            if takes_arg == "optional":
                self._optional_arg.add(name)
            self._usage[name] = usage or (f"{name}:ARG" if takes_arg is True else name)
            self._metadata[name] = metadata
            return obj

        return decorator

    def entry_name(self, spec: str) -> str:
        """The registered name a spec resolves to (``"imagefolder:/data"`` -> ``"imagefolder"``); a registered
        name is returned as it is, even one that needs an argument to be built."""
        if spec in self._items:
            return spec
        self.resolve(spec)
        return spec.partition(":")[0]

    def metadata(self, spec: str) -> Any:
        """The metadata registered with the entry ``spec`` resolves to (``None`` if none was declared)."""
        return self._metadata[self.entry_name(spec)]

    def usage(self, name: str) -> str:
        """How ``name`` is written with its argument (``"imagefolder:PATH"``, ``"square[:QUERIES]"``)."""
        return self._usage[self.entry_name(name)]

    def describe(self, name: str) -> dict[str, Any]:
        """``{"name", "usage", "summary" (first docstring line), "metadata"}`` of an entry, for listings."""
        entry = self._items[self.entry_name(name)]
        doc = (entry.__doc__ or "").strip() if inspect.isfunction(entry) or inspect.isclass(entry) else ""
        return {"name": self.entry_name(name), "usage": self.usage(name),
                "summary": doc.splitlines()[0] if doc else "", "metadata": self.metadata(name)}

    def resolve(self, spec: str) -> tuple[T, str | None]:
        """Return ``(entry, argument)`` for ``spec``; the argument is the text after ``prefix:`` or None."""
        if not isinstance(spec, str) or not spec:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {spec!r}. {self._valid()}")
        if spec in self._items and (spec not in self._takes_arg or spec in self._optional_arg):
            return self._items[spec], None
        prefix, sep, arg = spec.partition(":")
        if sep and prefix in self._takes_arg:
            if not arg:
                raise ValueError(f"{self.kind} {spec!r} needs an argument after ':' ({self._usage[prefix]})")
            return self._items[prefix], arg
        if spec in self._takes_arg:
            raise ValueError(f"{self.kind} {spec!r} needs an argument: write {self._usage[spec]}")
        raise ValueError(f"Unknown {self.kind} {spec!r}. {self._valid(spec)}")

    def get(self, spec: str) -> T:
        """Return the entry for an exact (argument-free) name."""
        entry, arg = self.resolve(spec)
        if arg is not None:
            raise ValueError(f"{self.kind} {spec!r} takes no argument here")
        return entry

    def names(self) -> list[str]:
        """Registered names, plain (``"imagefolder"``, not ``"imagefolder:PATH"``; see :meth:`usage`)."""
        return sorted(self._items)

    def __contains__(self, spec: object) -> bool:
        try:
            self.resolve(spec)  # type: ignore[arg-type]
        except ValueError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def _valid(self, spec: str | None = None) -> str:
        text = f"Valid {self.kind} names: {', '.join(sorted(self._usage.values()))}."
        if spec:
            close = difflib.get_close_matches(spec, list(self._items), n=1)
            if close:
                text += f" Did you mean {close[0]!r}?"
        return text
