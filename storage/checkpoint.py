"""Reading torch checkpoints without running code from the file (STYLE.md §19).

A ``torch.save`` file is a pickle: loaded with ``weights_only=False`` it calls whatever callable
it names (``os.system``, ...). Every checkpoint bevkd reads (student runs, teachers) goes through
:func:`load_checkpoint`, which uses torch's weights-only unpickler: tensors, and dicts, lists,
tuples, strings and numbers only. So checkpoints store their configs as plain JSON-able data.
torch is imported on first use, so ``import storage`` stays light.
"""

from __future__ import annotations

import os
import re
from typing import Any

from storage.errors import CheckpointError

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, its failures as one-line errors.

    Args:
        path: a ``torch.save`` file.
        map_location: where tensors go (``"cpu"``, a ``torch.device``).

    Returns:
        The stored object (tensors inside plain containers).

    Raises:
        CheckpointError: the file is missing or unreadable, or it asks to build an object the
            weights-only loader refuses (the message names the refused callable; nothing was run).
    """
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # a plain pickle.dump file: torch warns before refusing it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path}: file not found") from None
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"checkpoint {path}: {_refusal(str(exc))}; only tensors and plain data are loaded "
                              "(weights_only=True), nothing from the file was run") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"checkpoint {path}: unreadable ({type(exc).__name__}: {first})") from None


def _refusal(message: str) -> str:
    """What torch's multi-line weights-only error says, in a few words."""
    found = _GLOBAL.search(message)
    if found:
        return f"refused, it asks to call {found.group(1)}"
    lines = [ln.strip() for ln in message.split("WeightsUnpickler error:")[-1].splitlines() if ln.strip()]
    return f"not a weights-only checkpoint ({lines[0] if lines else 'unpickling failed'})"


__all__ = ["load_checkpoint"]
