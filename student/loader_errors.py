"""Bad input met inside a DataLoader worker reaches the trainer as the original error.

PyTorch re-raises a worker's exception by calling its type with one message string; our errors
(:class:`storage.errors.CacheCorruptError`, :class:`storage.errors.SampleError`) take several
fields, so the worker's error turns into a ``RuntimeError`` holding a whole traceback. Here the
worker catches those errors and ships them, pickled with their fields, as the batch itself
(:class:`BatchFailure`); the trainer raises the original, one line naming the sample and file.
Any other exception (a bug) keeps PyTorch's behaviour and its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from storage.errors import CacheCorruptError, CacheRowError, SampleError

#: errors of bad input (cache rows, sample files) carried from workers unchanged.
INPUT_ERRORS = (CacheCorruptError, CacheRowError, SampleError, FileNotFoundError)


@dataclass(frozen=True)
class ItemFailure:
    """An item that could not be read: its dataset index and the error."""

    index: int
    error: BaseException


@dataclass(frozen=True)
class BatchFailure:
    """A batch with at least one unreadable item; ``error`` is the first item's error."""

    error: BaseException


class GuardedDataset(Dataset):
    """``dataset`` whose :data:`INPUT_ERRORS` become :class:`ItemFailure` items."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except INPUT_ERRORS as exc:
            return ItemFailure(index=index, error=exc)


class GuardedCollate:
    """``collate`` of a batch, or a :class:`BatchFailure` when an item failed."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, items: list[Any]) -> Any:
        failed = [it for it in items if isinstance(it, ItemFailure)]
        if failed:
            return BatchFailure(error=failed[0].error)
        return self.collate(items)


__all__ = ["INPUT_ERRORS", "BatchFailure", "GuardedCollate", "GuardedDataset", "ItemFailure"]
