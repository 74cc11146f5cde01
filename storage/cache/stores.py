"""Opening a cache location as a Zarr store, and the few raw-key operations the cache needs.

A cache location is a local directory (``str`` / ``Path`` / ``file://``), any fsspec URL
(``s3://bucket/cache``, ``memory://x``) through :class:`zarr.storage.FsspecStore`, or a Zarr
store object (e.g. :class:`zarr.storage.MemoryStore`). Manifest fragments and the sample index
are plain keys of the same store.

Object storage: ``s3://`` needs ``s3fs``. Credentials and the endpoint come from the usual AWS
settings of each process (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, an instance role;
``AWS_ENDPOINT_URL=http://host:port`` for an S3-compatible server such as MinIO or moto), so the
CLI, Ray actors and DataLoader workers all reach the same bucket without flags; in Python,
``storage_options`` (e.g. ``{"endpoint_url": ..., "key": ..., "secret": ...}``) override them.
Tested against a local moto server (``tests/test_s3.py``).

Atomicity of ``put_bytes``: :class:`zarr.storage.LocalStore` writes a temporary file and
renames it; object stores (fsspec) write a key with a single PUT; :class:`MemoryStore` assigns
a dict entry. A reader therefore never sees half a fragment.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

from zarr.abc.store import RangeByteRequest, Store, SuffixByteRequest
from zarr.storage import FsspecStore, LocalStore

from storage.cache._zarr_private import buffer_from_bytes, default_buffer_prototype, sync
from storage.errors import CacheMetadataError

T = TypeVar("T")

StoreLike = str | Path | Store


def open_store(location: StoreLike, *, read_only: bool = False,
               storage_options: dict[str, Any] | None = None) -> Store:
    """The Zarr store of a cache location (see the module docstring).

    Raises:
        storage.errors.CacheMetadataError: a URL whose fsspec backend is not installed (says
            what to ``pip install``) or whose protocol fsspec does not know.
    """
    if isinstance(location, Store):
        return location.with_read_only(read_only) if read_only and not location.read_only else location
    text = str(location)
    if "://" in text and not text.startswith("file://"):
        try:
            return FsspecStore.from_url(text, storage_options=storage_options, read_only=read_only)
        except ImportError as e:  # fsspec knows the protocol, its package is not installed
            raise CacheMetadataError(f"cache {text}: cannot open {_protocol(text)}:// locations: {_first_line(e)} "
                                     f"({_install_hint(_protocol(text))})") from None
        except ValueError as e:  # "Protocol not known"
            raise CacheMetadataError(f"cache {text}: cannot open {_protocol(text)}:// locations "
                                     f"({_first_line(e)})") from None
    return LocalStore(text.removeprefix("file://"), read_only=read_only)


#: fsspec protocols whose package a bevkd extra installs (pyproject ``[project.optional-dependencies]``).
_EXTRAS = {"s3": "s3", "s3a": "s3"}
#: Where a connection failure's exception class comes from, besides OSError (builtin ConnectionError,
#: TimeoutError): the object-store clients under fsspec backends.
_CLIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "google", "adlfs", "azure")


def _protocol(url: str) -> str:
    return url.split("://", 1)[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _install_hint(protocol: str) -> str:
    """``pip install ...`` for an fsspec protocol: the bevkd extra, else the backend's package."""
    if protocol in _EXTRAS:
        return f"pip install 'bevkd[{_EXTRAS[protocol]}]'"
    from fsspec.registry import known_implementations

    impl = known_implementations.get(protocol, {}).get("class", "")
    return f"pip install {impl.split('.')[0]}" if impl else "install its fsspec backend"


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says a store could not be reached or refused the credentials (an OSError,
    or an error of an object-store client such as botocore's ``EndpointConnectionError`` /
    ``NoCredentialsError``), rather than a bug."""
    if isinstance(exc, OSError):
        return True
    return any(c.__module__.split(".")[0] in _CLIENT_MODULES for c in type(exc).__mro__)


def describe(store: Store) -> str:
    """A human-readable location for messages: a directory, a URL, or the store's repr."""
    if isinstance(store, LocalStore):
        return str(store.root)
    if isinstance(store, FsspecStore):
        return f"{store.fs.protocol if isinstance(store.fs.protocol, str) else store.fs.protocol[0]}://{store.path}"
    return repr(store)


def key_location(store: Store, key: str) -> str:
    """Where ``key`` lives, for error messages (a file path for local caches)."""
    if isinstance(store, LocalStore):
        return str(Path(store.root) / key)
    return f"{describe(store)}/{key}"


def put_bytes(store: Store, key: str, data: bytes) -> None:
    """Write ``key`` atomically (see the module docstring)."""
    sync(store.set(key, buffer_from_bytes(data)))


async def gather_settled(*aws: Awaitable[T]) -> list[T]:
    """``asyncio.gather`` that lets every awaitable finish before raising the first error.

    A plain gather raises on the first failure and leaves the others running; their errors are
    then never retrieved and asyncio prints a traceback for each on stderr when they are
    collected (a disk-full write of a shard failed with one line plus ~100 lines of
    "Task exception was never retrieved"). Here every result is retrieved.

    Raises:
        BaseException: the first error, in argument order, after all awaitables finished.
    """
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return cast("list[T]", results)


def put_many(store: Store, items: dict[str, bytes]) -> None:
    """:func:`put_bytes` of several keys, issued concurrently (one event-loop round trip).

    Raises:
        OSError: the first failed write, after every write finished.
    """
    async def put_all() -> None:
        await gather_settled(*(store.set(key, buffer_from_bytes(data)) for key, data in items.items()))
    sync(put_all())


def get_bytes(store: Store, key: str, *, start: int | None = None, end: int | None = None,
              suffix: int | None = None) -> bytes | None:
    """Read ``key`` (or ``[start, end)`` / its last ``suffix`` bytes); ``None`` if absent."""
    req = SuffixByteRequest(suffix) if suffix is not None else (
        RangeByteRequest(start, end) if start is not None and end is not None else None)
    buf = sync(store.get(key, prototype=default_buffer_prototype(), byte_range=req))
    return None if buf is None else buf.to_bytes()


def exists(store: Store, key: str) -> bool:
    return bool(sync(store.exists(key)))


def delete(store: Store, key: str) -> None:
    sync(store.delete(key))


def list_prefix(store: Store, prefix: str) -> list[str]:
    """All keys starting with ``prefix``, sorted."""
    async def collect() -> list[str]:
        return [k async for k in store.list_prefix(prefix)]
    return sorted(sync(collect()))


def _local_dir(store: LocalStore) -> Path | None:
    """The folder of a local store, or None when it does not exist.

    Raises:
        NotADirectoryError: the location is a file.
    """
    root = Path(store.root)
    if root.is_file():
        raise NotADirectoryError(f"{root} is a file, not a cache directory")
    return root if root.is_dir() else None


def first_entry(store: Store) -> str | None:
    """One entry (file or folder name) at the store's top level, or None if it is empty or absent.

    Raises:
        NotADirectoryError: a local location that is a file.
    """
    if isinstance(store, LocalStore):
        root = _local_dir(store)
        if root is None:
            return None
        with os.scandir(root) as entries:  # also sees empty folders, links, hidden files
            return next((e.name for e in entries), None)

    async def first() -> str | None:
        async for key in store.list_dir(""):
            return key
        return None
    return sync(first())


def top_entries(store: Store) -> list[str]:
    """Names of the store's top-level entries (files and folders; hidden ones and empty folders
    too in a local folder), sorted; empty for an absent location.

    Raises:
        NotADirectoryError: a local location that is a file.
    """
    if isinstance(store, LocalStore):
        root = _local_dir(store)
        if root is None:
            return []
        with os.scandir(root) as entries:
            return sorted(e.name for e in entries)

    async def collect() -> list[str]:
        return [name.rstrip("/") async for name in store.list_dir("")]
    return sorted(set(sync(collect())))
