"""Reading and writing checkpoint files safely: weights-only loading, atomic replacement.

``torch.load(..., weights_only=False)`` unpickles arbitrary objects, which runs code chosen by
whoever wrote the file; :func:`read_torch_file` only does so when the caller opts in. Files are
written through :func:`replacing`, so a crash while saving leaves the previous file intact.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pickle
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "read_torch_file", "replacing", "save_atomic"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or used with the requested configuration."""


def _written_by_torch_save(path: Path) -> bool:
    """``torch.save`` writes a zip archive (a pickle starting with the protocol byte before torch 1.6)."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def read_torch_file(path: str | os.PathLike, *, trust: bool = False, map_location: Any = "cpu") -> Any:
    """``torch.load`` of ``path`` with ``weights_only=True``; full unpickling only with ``trust``.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        CheckpointError: not a file of ``torch.save`` (or truncated), unreadable, or holding
            Python objects beyond tensors and containers while ``trust`` is false.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if not _written_by_torch_save(path):
        raise CheckpointError(f"{str(path)!r} is not a checkpoint: not a file written by torch.save "
                              "(or one cut short while it was written)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:  # torch's weights-only unpickler met an object it refuses
        if not trust:
            found = re.search(r"GLOBAL (\S+)", str(error))
            what = f"it needs {found.group(1)}" if found else "e.g. a module saved with torch.save(model)"
            raise CheckpointError(
                f"checkpoint {str(path)!r} holds pickled Python objects, not only tensors ({what}); "
                "unpickling runs code from the file, so it is refused: opt in with trust=True "
                "(CLI: --trust-checkpoint) for a file you trust, or save model.state_dict() instead"
            ) from None
    except Exception as error:  # a damaged archive, a storage of an unknown type, ...
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {_first_line(error)}") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:  # e.g. the class of a pickled module no longer exists
        message = f"checkpoint {str(path)!r} cannot be unpickled: {_first_line(error)}"
        raise CheckpointError(message) from error


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; moved onto ``path`` when the block succeeds.

    The temporary file is flushed to disk (``fsync``) and renamed with :func:`os.replace`, which
    is atomic on one file system: ``path`` holds either its old or its new content, never a
    partial one. When the block raises, the temporary file is removed and ``path`` is untouched.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "notes.txt"
        >>> with replacing(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
        ('done', ['notes.txt'])
    """
    path = Path(path)
    _remove_leftovers(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX; not on Windows)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _remove_leftovers(path: Path) -> None:
    """Delete the temporary files of :func:`replacing` that a killed writer left beside ``path``
    (its process id, in the name, no longer runs). POSIX only: elsewhere they stay."""
    if os.name != "posix":
        return
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (PermissionError, OverflowError):
            continue


def save_atomic(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through :func:`replacing`: no partial file, even after a crash."""
    with replacing(path) as tmp:
        torch.save(obj, tmp)
