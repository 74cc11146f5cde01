"""``bevkd inspect CACHE``: teacher, grid, rows ok/failed, bytes per sample per target, reuse hints.

Exit code 0; 1 when a metadata file (sample index, an array's ``zarr.json``) is missing or broken
(each named on stderr); 2 when there is no bevkd cache or its root ``zarr.json`` is unreadable.
"""

from __future__ import annotations

import argparse
import json
import sys

from storage.cache.inspect import format_summary, inspect_cache


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache", metavar="CACHE",
                        help="cache location: a local directory or an fsspec URL (e.g. s3://bucket/cache)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as one JSON object instead of the human-readable table")
    parser.add_argument("--max-failures", type=int, default=5,
                        help="how many failed rows (with their reasons) to list (default: 5)")


def run(args: argparse.Namespace) -> int:
    s = inspect_cache(args.cache, max_failures=args.max_failures)
    if args.json:
        print(json.dumps({
            "location": s.location, "schema": s.schema.to_dict(), "rows_ok": s.rows_ok,
            "rows_failed": s.rows_failed, "shards_committed": s.shards_committed,
            "targets": [{"name": t.name, "codec": t.codec, "raw_bytes": t.raw_bytes,
                         "stored_bytes": t.stored_bytes, "ratio": t.ratio} for t in s.targets],
            "stored_bytes_per_row": s.stored_bytes_per_row, "failures": s.failures, "hints": s.hints,
            "problems": s.problems}))
    else:
        print(format_summary(s))
    for problem in s.problems:
        print(f"bevkd inspect: {problem}", file=sys.stderr)
    return 1 if s.problems else 0
