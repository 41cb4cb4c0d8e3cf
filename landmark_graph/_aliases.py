"""The old import paths of the modules that moved into :mod:`landmark_graph.engine`.

``import landmark_graph.training`` gives the module ``landmark_graph.engine.training`` itself, the
same object under both names, so ``isinstance`` checks, pickled class paths and monkeypatching
agree. The engine module is imported only when an old path is first asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

MOVED = {f"landmark_graph.{name}": f"landmark_graph.engine.{name}"
         for name in ("backbones", "cli", "detectors", "drawing", "export", "inference", "training")}


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import machinery set the alias's spec on the engine module: give it back its own.
        module.__spec__ = module.__spec__.loader_state


class AliasFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths in :data:`MOVED` (on ``sys.meta_path``, ahead of the file finders)."""

    def find_spec(self, fullname: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader()) if fullname in MOVED else None


def install() -> None:
    if not any(isinstance(finder, AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, AliasFinder())
