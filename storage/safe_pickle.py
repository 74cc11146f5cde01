"""Load info pickles without running code from the data file.

``pickle.load`` calls whatever callable a pickle names (``os.system``, ``subprocess.Popen``,
...). Info files come from other people's disks, so :func:`safe_load` uses an unpickler whose
``find_class`` admits only plain-data builtins and the few numpy callables that rebuild arrays,
dtypes and scalars (``_reconstruct``, ``_frombuffer``, ``scalar``, ``ndarray``, ``dtype`` in both
numpy 1 ``numpy.core`` and numpy 2 ``numpy._core`` spellings). Anything else raises
:class:`~storage.errors.UnsafePickleError` *before* the callable is fetched, so nothing named by
the file is ever called.
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np

from storage.errors import UnsafePickleError

#: Builtins that only build plain data.
_BUILTIN_TYPES = (dict, list, tuple, set, frozenset, str, bytes, bytearray, int, float, complex, bool)


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Protocol-2 pickles spell ``bytes`` as ``_codecs.encode(str, 'latin1')``; allow only that."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591", "l1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin1", errors)


def _numpy_callables() -> dict[str, Any]:
    # Take the callables from numpy's own reductions so the same objects serve numpy 1
    # (``numpy.core``) and numpy 2 (``numpy._core``) spellings.
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]  # protocol 5 rebuilds arrays from a bytes buffer
    out: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for core in ("numpy.core", "numpy._core"):
        out[f"{core}.multiarray._reconstruct"] = reconstruct
        out[f"{core}.multiarray.scalar"] = scalar
        out[f"{core}.numeric._frombuffer"] = frombuffer
    return out


def _allowed() -> dict[str, Callable[..., Any]]:
    allowed: dict[str, Callable[..., Any]] = {f"builtins.{t.__name__}": t for t in _BUILTIN_TYPES}
    allowed["_codecs.encode"] = _latin1_encode
    allowed.update(_numpy_callables())
    return allowed


_ALLOWED: dict[str, Callable[..., Any]] = _allowed()
#: The ``module.name`` globals an info pickle may reference.
ALLOWED_GLOBALS: tuple[str, ...] = tuple(sorted(_ALLOWED))


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, path: str) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        if module == "__builtin__":  # protocol < 3 pickles spell builtins the Python 2 way
            module = "builtins"
        key = f"{module}.{name}"
        if key not in _ALLOWED:
            err = UnsafePickleError(
                f"{self._path}: refused to load global {key!r} (an info pickle may only hold builtins "
                f"data and numpy arrays); nothing from the file was executed")
            err.path, err.global_name = self._path, key
            raise err
        return _ALLOWED[key]

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"{self._path}: persistent ids are not allowed")


def safe_loads(data: bytes, path: str = "<bytes>") -> object:
    """:func:`safe_load` of in-memory bytes; ``path`` only names the source in errors."""
    import io

    return _load(io.BytesIO(data), path)


def safe_load(path: str | os.PathLike[str]) -> object:
    """Unpickle ``path`` admitting only plain data (see :data:`ALLOWED_GLOBALS`).

    Returns:
        The unpickled object (dicts, lists, str, numbers, numpy arrays and scalars).

    Raises:
        FileNotFoundError: the file does not exist.
        UnsafePickleError: the pickle references any other global; the message names the file
            and the ``module.name`` asked for (kept as ``.path`` / ``.global_name``).
        ValueError: the file is not a readable pickle (truncated, corrupt), naming the file.
    """
    p = str(Path(path))
    with open(p, "rb") as f:
        return _load(f, p)


def _load(f: Any, path: str) -> object:
    try:
        return _RestrictedUnpickler(f, path).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, LookupError) as exc:
        raise ValueError(f"{path}: not a readable info pickle ({type(exc).__name__}: {exc})") from None


__all__ = ["ALLOWED_GLOBALS", "safe_load", "safe_loads"]
