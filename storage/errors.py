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

    def __reduce__(self):  # keep attributes across pickling (Ray, multiprocessing)
        return (SampleError, (self.sample_token, self.field, self.problem, self.path))


class UnsafePickleError(Exception):
    """An info pickle asked to load something other than builtins or numpy arrays."""


class CacheMismatchError(Exception):
    """A cache's schema, grid, dataset or teacher differs from what the caller asked for."""
