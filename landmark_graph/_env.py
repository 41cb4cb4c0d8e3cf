"""Reading the library's environment variables on every call, cheaply."""

from __future__ import annotations

import os

__all__ = ["getenv"]

# ``os.environ.get`` of an unset variable costs ~1.5 us (it raises and catches a KeyError), a
# tenth of the whole op at B = 1. CPython's environ keeps its encoded entries in ``_data``; read
# those directly when it does, else fall back to the public mapping.
_data = getattr(os.environ, "_data", None)
_encodekey = getattr(os.environ, "encodekey", None)
_decodevalue = getattr(os.environ, "decodevalue", None)
_keys: dict[str, object] = {}


def getenv(name: str) -> str | None:
    """``os.environ.get(name)``, read anew at each call (so ``os.environ[name] = ...`` takes
    effect at once)."""
    if _data is None or _encodekey is None or _decodevalue is None:
        return os.environ.get(name)
    key = _keys.get(name)
    if key is None:
        key = _keys[name] = _encodekey(name)
    value = _data.get(key)
    return None if value is None else _decodevalue(value)
