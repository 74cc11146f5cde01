"""Replacing a cache without touching anything else at its location.

A cache owns these top-level entries of its location (:mod:`storage.cache.layout`,
:mod:`storage.cache.manifest`)::

    zarr.json  targets/  index/  manifest/  manifest.parquet

and, in a local folder, the ``zarr.<hex>.partial`` / ``manifest.<hex>.partial`` temporary files of
an atomic write that was interrupted (:class:`zarr.storage.LocalStore` writes
``<key stem>.<uuid4 hex>.partial`` and renames it). Anything else there (a user's ``NOTES.txt``,
a training run's ``checkpoints/`` and ``train_log.jsonl``) is foreign: ``--overwrite`` refuses
a location holding foreign entries, and replacing a half-created cache deletes only the cache's
own entries.
"""

from __future__ import annotations

import re

from zarr.abc.store import Store
from zarr.storage import LocalStore

from storage.cache import layout, manifest, stores
from storage.cache._zarr_private import sync
from storage.errors import NotACacheError

#: Top-level folders (key prefixes) of a cache.
OWN_PREFIXES = frozenset({"targets", "index", "manifest"})
#: Top-level files (keys) of a cache.
OWN_KEYS = frozenset({"zarr.json", manifest.COMPACTED_KEY})
_PARTIAL = re.compile(r"(zarr|manifest)\.[0-9a-f]{32}\.partial")


def is_own_entry(name: str) -> bool:
    """Whether top-level entry ``name`` of a cache location belongs to the cache (module docstring)."""
    return name in OWN_PREFIXES or name in OWN_KEYS or _PARTIAL.fullmatch(name) is not None


def foreign_entries(store: Store) -> list[str]:
    """Top-level entries of the location that are not the cache's own (:func:`is_own_entry`), sorted."""
    return [name for name in stores.top_entries(store) if not is_own_entry(name)]


def check_overwritable(store: Store) -> None:
    """Refuse to replace the location (``--overwrite``, or completing a half-created cache) unless it
    is empty, absent, or a bevkd cache and nothing else.

    Raises:
        storage.errors.NotACacheError: it is not a bevkd cache (:func:`layout.check_replaceable`),
            or it is one that also holds foreign entries (the one-line message names up to three);
            nothing is deleted either way.
        NotADirectoryError: a local location that is a file.
    """
    layout.check_replaceable(store)
    foreign = foreign_entries(store)
    if foreign:
        shown = ", ".join(repr(n) for n in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise NotACacheError(f"{stores.describe(store)} holds a bevkd cache and also {shown}, which are not the "
                             "cache's: replacing the cache would delete them, so nothing was deleted; move them out "
                             "of the cache's folder or choose another --out")


def delete_own_entries(store: Store) -> None:
    """Delete the cache's own top-level entries (:func:`is_own_entry`) and nothing else."""
    for name in stores.top_entries(store):
        if not is_own_entry(name):
            continue
        if name in OWN_PREFIXES and not isinstance(store, LocalStore):
            sync(store.delete_dir(name))
        else:  # LocalStore.delete removes a folder too
            sync(store.delete(name))
