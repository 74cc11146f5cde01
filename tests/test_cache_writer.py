"""Writer protocol: resume, replace, row checks, two processes, and the reader's refusals."""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import replace

import numpy as np
import pytest

from storage.cache import CacheReader, CacheSchema, CacheWriter, RowResult
from storage.cache.verify import verify_cache
from storage.errors import CacheMismatchError
from storage.grid import BEVGrid
from test_cache_roundtrip import CFG, DATASET, GRID, make_cache, make_data, write


def _write_shards(cache: str, shards: list[int], seed: int) -> None:
    """Child process: regenerate the same data (same seed) and write only ``shards``."""
    _, data = make_data(seed=seed, num_samples=12)
    writer = CacheWriter.open(cache)
    write(writer, data, shards=shards)


def test_two_processes_write_distinct_shards_of_one_cache(tmp_path):
    cache = str(tmp_path / "c")
    _, writer, data = make_cache(cache, seed=7, num_samples=12, shard_size=3)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_shards, args=(cache, shards, 7)) for shards in ([3, 0], [1, 2])]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert writer.committed_shards() == [0, 1, 2, 3] and writer.pending_shards() == []
    reader = CacheReader(cache)
    assert len(reader) == 12
    for (token, _view), want in data.items():
        np.testing.assert_array_equal(reader.read(token).boxes, want.boxes)
    assert verify_cache(cache).ok


def test_resume_replace_and_row_checks(tmp_path):
    cache = tmp_path / "c"
    _, writer, data = make_cache(cache, num_samples=8, shard_size=4)
    write(writer, data, shards=[1])
    assert CacheWriter.open(cache).pending_shards() == [0]
    with pytest.raises(FileExistsError, match="shard 1 already committed"):
        write(writer, data, shards=[1])
    rows = writer.shard_rows(0)
    with pytest.raises(ValueError, match="rows missing"):
        writer.write_shard(0, [RowResult(sample_token=t, targets=data[t, v]) for t, v in rows[:3]])
    with pytest.raises(ValueError, match="not in shard rows"):
        writer.write_shard(0, [RowResult(sample_token=t, targets=data[t, v]) for t, v in writer.shard_rows(1)])
    assert writer.committed_shards() == [1]  # failed calls committed nothing
    # replace shard 1 with other data: a reader opened before sees the new rows after refresh()
    token = writer.shard_rows(1)[0][0]
    early = CacheReader(cache)
    np.testing.assert_array_equal(early.read(token).boxes, data[token, 0].boxes)
    other = {k: data[k2] for k, k2 in zip(data, reversed(list(data)), strict=True)}
    writer.write_shard(1, [RowResult(sample_token=t, targets=other[t, v]) for t, v in writer.shard_rows(1)],
                       replace=True)
    early.refresh()
    np.testing.assert_array_equal(early.read(token).boxes, other[token, 0].boxes)
    np.testing.assert_array_equal(CacheReader(cache).read(token).boxes, other[token, 0].boxes)


def test_create_refuses_an_existing_cache_unless_overwrite(tmp_path):
    schema, writer, data = make_cache(tmp_path / "c", num_samples=4)
    write(writer, data)
    with pytest.raises(Exception, match="(?i)exist|contains"):
        CacheWriter.create(tmp_path / "c", schema, writer.sample_tokens)
    CacheWriter.create(tmp_path / "c", schema, writer.sample_tokens, overwrite=True)
    assert len(CacheReader(tmp_path / "c")) == 0
    with pytest.raises(ValueError, match="num_rows"):
        CacheWriter.create(tmp_path / "d", schema, writer.sample_tokens[:3])


def test_reader_refuses_other_grid_dataset_or_version(tmp_path):
    schema, writer, data = make_cache(tmp_path / "c", num_samples=4)
    write(writer, data)
    CacheReader(tmp_path / "c", expect_grid=GRID, expect_dataset=DATASET)
    other_grid = BEVGrid(point_cloud_range=(-8, -8, -5, 8, 8, 3), voxel_size=(0.5, 0.5, 8))
    with pytest.raises(CacheMismatchError, match="grid"):
        CacheReader(tmp_path / "c", expect_grid=other_grid)
    with pytest.raises(CacheMismatchError, match="dataset"):
        CacheReader(tmp_path / "c", expect_dataset=replace(DATASET, split="val"))
    with pytest.raises(CacheMismatchError, match="schema version 1, expected 2"):
        CacheReader(tmp_path / "c", expect_schema_version=2)


def test_schema_round_trips_and_checks_shapes():
    schema, _, _ = make_cache("memory://schema-test", num_samples=2)
    assert CacheSchema.from_dict(schema.to_dict()) == schema
    assert schema.num_shards == 1 and schema.shard_rows(0) == range(0, 2)
    wrong = BEVGrid(point_cloud_range=(-8, -8, -5, 8, 8, 3), voxel_size=(2, 2, 8))
    with pytest.raises(ValueError, match="bev_shape"):
        replace(schema, grid=wrong)
    with pytest.raises(ValueError, match="multiple of views"):
        replace(schema, views=3)
    assert CFG.bev_channels[0][0] == "lidar_bev"
