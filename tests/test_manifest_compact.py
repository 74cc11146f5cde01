"""The compacted manifest: one file that opens a cache, equal to its fragments, never stale; and
manifest rows that do not fit the cache refused with one line naming the file and the row."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.cli import main
from storage.cache import CacheReader, CacheWriter, RowResult, manifest, stores
from storage.errors import CacheCorruptError
from test_cache_roundtrip import make_cache, write


def _rows(reader: CacheReader) -> dict:
    return reader.rows.select(["row", "sample_token", "shard", "status", "timestamp_us"]).to_pydict()


def test_compacted_manifest_equals_fragments_and_is_what_opens(tmp_path):
    loc = tmp_path / "cache"
    schema, writer, data = make_cache(loc, num_samples=10, shard_size=4)
    write(writer, data)
    before = _rows(CacheReader(loc))
    report = manifest.compact_manifest(writer.store, [t.name for t in schema.targets])
    assert (report.rows, report.shards, report.fragments_merged) == (10, 3, 3)
    assert pq.read_table(loc / manifest.COMPACTED_KEY).num_rows == 10
    # globbable apart: manifest/*.parquet is exactly the fragments (kept), each row once
    frags = sorted(loc.glob("manifest/*.parquet"))
    assert [p.name for p in frags] == [f"shard-{i:06d}.parquet" for i in range(3)]
    assert sorted(r for p in frags for r in pq.read_table(p).column("row").to_pylist()) == list(range(10))
    # the reader takes covered shards from the compacted file: garbage in a fragment goes unread
    (loc / manifest.fragment_key(1)).write_bytes(b"not parquet")
    reader = CacheReader(loc)
    assert _rows(reader) == before
    assert reader.read(5).sample_token == before["sample_token"][5]  # checksums from the compacted rows hold


def test_an_unreadable_compacted_file_falls_back_to_the_fragments(tmp_path):
    loc = tmp_path / "cache"
    schema, writer, data = make_cache(loc, num_samples=10, shard_size=4)
    write(writer, data)
    before = _rows(CacheReader(loc))
    manifest.compact_manifest(writer.store, [t.name for t in schema.targets])
    (loc / manifest.COMPACTED_KEY).write_bytes(b"PAR1 truncated")
    assert _rows(CacheReader(loc)) == before


def test_resume_after_compaction_sees_new_and_rewritten_shards(tmp_path):
    loc = tmp_path / "cache"
    schema, writer, data = make_cache(loc, num_samples=10, shard_size=4)
    write(writer, data, shards=[0, 1])
    manifest.compact_manifest(writer.store, [t.name for t in schema.targets])
    writer = CacheWriter.open(loc)
    assert writer.pending_shards() == [2]
    write(writer, data, shards=[2])  # committed since the compaction: the compacted file goes
    assert not (loc / manifest.COMPACTED_KEY).exists()
    assert CacheReader(loc).rows.column("row").to_pylist() == list(range(10))
    manifest.compact_manifest(writer.store, [t.name for t in schema.targets])
    # a shard rewritten after compaction reads its new rows, never the compacted copy
    writer.write_shard(0, [RowResult(sample_token=t, view=v, scene="scene-2", timestamp_us=777,
                                     targets=data[t, v]) for t, v in writer.shard_rows(0)], replace=True)
    table = CacheReader(loc).rows.to_pydict()
    assert table["timestamp_us"][:4] == [777] * 4 and table["scene"][4] == "scene-1"
    # a shard whose fragment is gone is not committed, whatever the compacted file holds
    manifest.compact_manifest(writer.store, [t.name for t in schema.targets])
    os.remove(loc / manifest.fragment_key(1))
    assert CacheReader(loc).rows.column("shard").to_pylist() == [0] * 4 + [2] * 2
    assert CacheWriter.open(loc).pending_shards() == [1]


def test_compact_command(tmp_path, capsys):
    loc = tmp_path / "cache"
    _, writer, data = make_cache(loc, num_samples=10, shard_size=4)
    write(writer, data)
    assert main(["compact", str(loc)]) == 0
    out = capsys.readouterr().out
    assert "compacted 3 fragments" in out and "10 rows of 3 shards" in out
    assert (loc / manifest.COMPACTED_KEY).is_file()
    assert main(["compact", str(loc)]) == 0  # idempotent
    (tmp_path / "empty").mkdir()
    assert main(["compact", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty" in err[0]


def _break_row(store, shard: int, new_row: int) -> None:
    table = manifest.read_fragment(store, shard)
    rows = table.column("row").to_pylist()
    rows[1] = new_row
    column = pa.array(rows, pa.int64())
    manifest.write_fragment(store, shard, table.set_column(table.column_names.index("row"), "row", column))


@pytest.mark.parametrize("bad_row", [10_000, 0])  # outside the cache; another shard's row
def test_bad_manifest_row_index_is_one_line_naming_file_and_row(tmp_path, capsys, bad_row):
    loc = tmp_path / "cache"
    _, writer, data = make_cache(loc, num_samples=10, shard_size=4)
    write(writer, data)
    _break_row(writer.store, 1, bad_row)
    fragment = stores.key_location(writer.store, manifest.fragment_key(1))
    with pytest.raises(CacheCorruptError) as exc:
        CacheReader(loc)
    assert fragment in str(exc.value) and "manifest row 1" in str(exc.value) and f"row {bad_row}" in str(exc.value)
    assert main(["compact", str(loc)]) == 2  # nothing compacted from a bad fragment
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and "manifest row 1" in err[0]
    assert not Path(loc, manifest.COMPACTED_KEY).exists()
