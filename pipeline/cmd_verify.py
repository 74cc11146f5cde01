"""``bevkd verify CACHE``: re-read every committed row, check checksums, name each bad row.

Exit code 0 when every committed ok row reads back as written, 1 otherwise.
"""

from __future__ import annotations

import argparse

from tqdm import tqdm

from storage.cache import layout, manifest, stores
from storage.cache.verify import verify_cache


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache", metavar="CACHE",
                        help="cache location: a local directory or an fsspec URL (e.g. s3://bucket/cache)")
    parser.add_argument("--max-problems", type=int, default=50,
                        help="how many corrupt/missing rows to print (all are counted; default: 50)")
    parser.add_argument("--no-progress", action="store_true", help="do not show the per-shard progress bar")


def run(args: argparse.Namespace) -> int:
    store = stores.open_store(args.cache, read_only=True)
    layout.open_root(store)  # FileNotFoundError before any progress bar when there is no cache
    total = len(manifest.committed_shards(store))
    with tqdm(total=total, unit="shard", desc="verify", disable=args.no_progress) as bar:
        report = verify_cache(store, progress=bar.update)
    for p in report.problems[:args.max_problems]:
        print(f"{p.problem.upper()}: {p}")
    if len(report.problems) > args.max_problems:
        print(f"... and {len(report.problems) - args.max_problems} more")
    if report.uncommitted_shards:
        print(f"note: shards {report.uncommitted_shards} hold data but no manifest fragment "
              "(invisible to readers; the cache job rewrites them)")
    bad_rows = len({p.row for p in report.problems})
    print(f"verify {report.location}: {report.rows_checked} committed ok rows checked, "
          f"{bad_rows} bad ({len(report.problems)} target problems), "
          f"{report.rows_failed_in_job} rows failed in the cache job")
    return 0 if report.ok else 1
