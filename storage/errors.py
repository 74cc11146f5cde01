"""Errors that name the sample, the file and the field (STYLE.md §18)."""

from __future__ import annotations


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
