"""``bevkd compact CACHE``: merge a cache's manifest fragments into one compacted Parquet file.

A cache job compacts its manifest when it ends; this command does it for a cache written before
that, or by a job that was stopped. Opening a cache then reads one manifest file instead of one
per shard (about 1,100 at nuScenes trainval). Safe to rerun; run it while no job writes to the
cache (see :mod:`storage.cache.manifest`).
"""

from __future__ import annotations

import argparse
import time

from storage.cache import layout, manifest, stores


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache", metavar="CACHE",
                        help="cache location: a local directory or an fsspec URL (e.g. s3://bucket/cache)")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    store = stores.open_store(args.cache)
    _, attrs = layout.open_root(store)  # FileNotFoundError (one line) when there is no cache
    schema = layout.read_schema(store, attrs)  # refuses another layout version: nothing written to it
    fits = manifest.RowLayout(num_rows=schema.num_rows, shard_size=schema.shard_size, views=schema.views)
    report = manifest.compact_manifest(store, [t.name for t in schema.targets], layout=fits)
    where = stores.key_location(store, manifest.COMPACTED_KEY)
    if not report.rows:
        print(f"cache {stores.describe(store)}: nothing committed, nothing to compact")
        return 0
    print(f"compacted {report.fragments_merged} fragments into {where}: {report.rows} rows of "
          f"{report.shards} shards, {report.nbytes / 1e6:.2f} MB, in {time.perf_counter() - start:.1f} s")
    return 0
