"""``bevkd verify CACHE``: re-read every committed row, check checksums, name each bad row.

Exit codes: see :data:`EPILOG`.
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from storage.cache import layout, manifest, stores
from storage.cache.verify import VerifyReport, verify_cache

#: Exit code of a sound but incomplete cache (shards not committed, or creation unfinished).
EXIT_INCOMPLETE = 3
EPILOG = f"""exit codes:
  0  complete: every shard committed, every committed ok row reads back as written
  1  corrupt: a committed row is missing or fails its checksum, or a metadata file is broken
  2  not a cache: no bevkd cache at CACHE, its root zarr.json is unreadable or has a wrong field,
     its schema version is not the one this bevkd reads, or the store cannot be reached (one line on stderr)
  {EXIT_INCOMPLETE}  incomplete: what is committed is sound, but shards are not committed yet or the
     cache's creation did not finish; rerun the same bevkd cache command to resume
Rows that failed in the cache job (listed by bevkd inspect) do not change the exit code."""


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
    for m in report.metadata_problems:
        print(f"{'INCOMPLETE' if report.creation_unfinished else 'CORRUPT'}: {m}")
    for name, why in report.unreadable_targets.items():
        print(f"CORRUPT: target {name} unreadable ({why}): every committed ok row is affected "
              f"({report.rows_checked} rows)")
    for p in report.problems[:args.max_problems]:
        print(f"{p.problem.upper()}: {p}")
    if len(report.problems) > args.max_problems:
        print(f"... and {len(report.problems) - args.max_problems} more")
    if report.uncommitted_shards:
        print(f"note: shards {report.uncommitted_shards} hold data but no manifest fragment "
              "(invisible to readers; the cache job rewrites them)")
    print(_summary(report))
    if not report.ok and not report.creation_unfinished:
        return 1
    if not report.complete:
        print(f"bevkd verify: {_incomplete(report)}", file=sys.stderr)
        return EXIT_INCOMPLETE
    return 0


def _summary(report: VerifyReport) -> str:
    """The last line of stdout: rows checked and bad, and which targets / files the bad ones come from."""
    affected = sorted({p.target for p in report.problems} | set(report.unreadable_targets))
    text = (f"verify {report.location}: {report.rows_checked} committed ok rows checked, {report.bad_rows} bad "
            f"({report.target_problems} target problems" + (f" in {', '.join(affected)}" if affected else "") + ")")
    if report.unreadable_targets:
        text += f"; unreadable targets (every row bad): {', '.join(report.unreadable_targets)}"
    if report.unreadable_fragments:
        text += f"; rows of shards {report.unreadable_fragments} not checked (manifest fragment unreadable)"
    if report.metadata_problems and not report.creation_unfinished:
        text += f"; {len(report.metadata_problems)} metadata problem(s)"
    return text + f", {report.rows_failed_in_job} rows failed in the cache job"


def _incomplete(report: VerifyReport) -> str:
    if report.creation_unfinished:
        return (f"cache {report.location} is incomplete: its creation did not finish "
                f"({report.metadata_problems[0]}); rerun the same bevkd cache command to complete it")
    pending = report.num_shards - report.shards_committed
    return (f"cache {report.location} is incomplete: {pending} of {report.num_shards} shards not committed; "
            "rerun the same bevkd cache command to resume")
