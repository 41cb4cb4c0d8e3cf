"""Named choices of one kind, filled by a decorator or a call: the one registry mechanism.

Landmark schemes, NME normalisations, data sets, backbones, heads, adjacencies, losses,
optimisers, schedules, face detectors and the command's subcommands are each a :class:`Registry`.
Registering a name makes it available everywhere at once: in Python (``registry.get(name)``), in
:class:`~landmark_graph.engine.training.TrainConfig` and in the ``choices`` of the ``landmark-graph``
command, which are read from the registries when it parses (``landmark-graph --plugin MODULE``
imports a module of your registrations first).

Example:
    >>> ACTIVATIONS = Registry("activation")
    >>> @ACTIVATIONS.register("relu")
    ... def relu(x):
    ...     return max(x, 0.0)
    >>> identity = ACTIVATIONS.register("identity", lambda x: x)
    >>> ACTIVATIONS.get("relu")(-2.0), ACTIVATIONS.names(), "tanh" in ACTIVATIONS
    (0.0, ['relu', 'identity'], False)
    >>> ACTIVATIONS.get("tanh")
    Traceback (most recent call last):
    ...
    landmark_graph.registry.UnknownNameError: unknown activation 'tanh'; registered: relu, identity
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

__all__ = ["Registry", "UnknownNameError"]

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A name no :class:`Registry` entry has (a ``ValueError``, so callers catching that still do)."""


class Registry(Generic[T]):
    """Objects of one ``kind`` by name, in registration order.

    Args:
        kind: what the entries are, for messages (``"loss"``, ``"landmark scheme"``).

    ``name in registry``, ``len(registry)``, iteration (the names) and ``registry[name]`` (the
    same as :meth:`get`) read it; :meth:`register` and :meth:`unregister` change it.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str, obj: None = None, *, overwrite: bool = False) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, *, overwrite: bool = False) -> T: ...

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        """Add ``obj`` under ``name`` and return it; without ``obj``, a decorator that does so.

        Raises:
            ValueError: ``name`` is not a non-empty string, or is taken and ``overwrite`` is false.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty str, got {name!r}")

        def add(value: T) -> T:
            if name in self._entries and not overwrite:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
            self._entries[name] = value
            return value

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (``ValueError`` when it is not registered)."""
        self.get(name)
        del self._entries[name]

    def get(self, name: str) -> T:
        """What ``name`` holds; a one-line :class:`UnknownNameError` listing the registered names
        otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            known = ", ".join(self._entries)
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs, in registration order."""
        return list(self._entries.items())

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
