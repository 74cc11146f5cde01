"""Errors that name the sample, the file and the field (STYLE.md §18)."""

from __future__ import annotations

from typing import Any


class SampleError(Exception):
    """A sample's input is missing or broken.

    The message reads ``sample <token>: <field> <problem> at <path>`` so a user can find the
    file; ``sample_token``, ``field`` and ``path`` are kept as attributes for manifests.
    """

    def __init__(self, sample_token: str, field: str, problem: str, path: str | None = None) -> None:
        self.sample_token = sample_token
        self.field = field
        self.problem = problem
        self.path = path
        where = f" at {path}" if path else ""
        super().__init__(f"sample {sample_token}: {field} {problem}{where}")

    def __reduce__(self) -> tuple[type[SampleError], tuple[str, str, str, str | None]]:
        # keep attributes across pickling (Ray, multiprocessing)
        return (SampleError, (self.sample_token, self.field, self.problem, self.path))


class UnsafePickleError(Exception):
    """An info pickle asked to load something other than builtins or numpy arrays.

    :func:`storage.safe_pickle.safe_load` sets ``path`` (the file) and ``global_name`` (the
    refused ``module.name``) on the errors it raises.
    """

    path: str
    global_name: str


class CacheMismatchError(Exception):
    """A cache's schema, grid, dataset or teacher differs from what the caller asked for."""


class CacheRowError(LookupError):
    """A cache row is not readable: not committed yet, or committed as failed (with its reason)."""


class CacheCorruptError(Exception):
    """A committed cache row fails its checksum or cannot be decoded.

    The message reads ``sample <token>: target <name> corrupt at <key path>: <problem>``;
    ``sample_token``, ``target`` and ``path`` are kept as attributes.
    """

    def __init__(self, sample_token: str, target: str, path: str, problem: str) -> None:
        self.sample_token = sample_token
        self.target = target
        self.path = path
        self.problem = problem
        super().__init__(f"sample {sample_token}: target {target} corrupt at {path}: {problem}")

    def __reduce__(self) -> tuple[type[CacheCorruptError], tuple[str, str, str, str]]:
        # keep attributes across pickling (DataLoader workers)
        return (CacheCorruptError, (self.sample_token, self.target, self.path, self.problem))


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: missing, unreadable, refused by the weights-only loader
    (it asks to build an object, i.e. to run code), or naming a teacher it may not name.

    The message is one line and starts with ``checkpoint <path>:``.
    """


class NotACacheError(CacheMismatchError):
    """A location that should hold a bevkd cache holds something else (so it is never deleted)."""


class DatasetTableError(ValueError):
    """A dataset table (nuScenes ``<version>/*.json``) is unreadable, or a row misses a field or
    references a token that does not exist.

    The message is one line: ``<table path>: record <row token> field <field> <problem>``;
    ``path``, ``row_token`` and ``field`` are kept as attributes (``""`` when not known).
    """

    def __init__(self, message: str, *, path: str = "", row_token: str = "", field: str = "") -> None:
        self.path, self.row_token, self.field = path, row_token, field
        super().__init__(message)

    def __reduce__(self) -> tuple[type[DatasetTableError], tuple[str], dict[str, str]]:
        # keep attributes across pickling (Ray)
        return (type(self), (str(self),), {"path": self.path, "row_token": self.row_token, "field": self.field})


class BoxConventionError(ValueError):
    """A dataset's GT boxes disagree with its LiDAR points (``num_lidar_pts``): they are probably
    stored in another box convention than the reader assumes. One line naming the likely cause."""


class CacheMetadataError(Exception):
    """A cache's metadata file (a ``zarr.json``, the sample index) is missing or unreadable.

    The message names the file: ``cache <location>: <file> <problem>``.
    """


class CacheIncompleteError(Exception):
    """A cache whose creation did not finish (e.g. the disk filled up while it was created) and
    which holds no committed shard: rerunning the same ``bevkd cache`` command completes it."""


class CacheWriteError(OSError):
    """Writing a cache failed (disk full, no permission, read-only file system).

    One line naming the cache and what was being written; ``errno`` is the underlying one.
    Nothing committed is lost: a shard counts only once its manifest fragment is written, and a
    rerun resumes.
    """

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno N]" prefix
        return str(self.strerror)


def short_repr(value: Any) -> str:
    """``repr(value)``, cut to 60 characters: the "(got ...)" part of a one-line input error."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def numbers_phrase(shape: tuple[int, ...]) -> str:
    """What a numeric field of ``shape`` should be, for an error: ``"4 numbers"``, ``"3x3 numbers"``,
    ``"Nx7 numbers"`` (``-1``: any length), ``"a number"`` for ``()``."""
    return "x".join("N" if n == -1 else str(n) for n in shape) + " numbers" if shape else "a number"
