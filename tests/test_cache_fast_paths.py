"""The writer's fast paths store exactly what the slow ones did: its own shard encoding
(storage.cache.layout.encode_shard) is byte-identical to Zarr's, arrays with other codecs still go
through Zarr, and codecs.to_float16 is NumPy's float16 cast bit for bit."""

from __future__ import annotations

import numpy as np
from zarr.codecs import GzipCodec

from storage.cache import CacheReader, CacheWriter, RowResult, layout, stores
from storage.cache.codecs import components, to_float16
from storage.cache.verify import verify_cache
from test_cache_roundtrip import make_cache


def _shard_bytes(store, array, shard_index):
    return stores.get_bytes(store, layout.shard_key(array, shard_index))


def test_writer_shards_are_byte_identical_to_zarr(tmp_path):
    # 10 rows in shards of 4: shard 2 is the short last one; row 5 fails (all-zero chunks).
    schema, writer, data = make_cache(tmp_path / "ours", num_samples=10, shard_size=4)
    failed = writer.sample_tokens[5]
    for i in range(schema.num_shards):
        writer.write_shard(i, [RowResult(sample_token=t, targets=data[t, v]) if t != failed
                               else RowResult(sample_token=t, error="teacher failed") for t, v in writer.shard_rows(i)])
    ours = stores.open_store(tmp_path / "ours")
    theirs = stores.open_store(tmp_path / "zarr")
    their_arrays = layout.open_arrays(layout.create_arrays(theirs, schema, overwrite=False), schema)
    our_arrays = layout.open_arrays(layout.open_root(ours)[0], schema)
    compared = 0
    for spec in schema.targets:
        for comp in components(spec):
            ours_arr, theirs_arr = our_arrays[spec.name][comp], their_arrays[spec.name][comp]
            assert layout.shard_encoding(ours_arr) is not None, f"{spec.name}/{comp} fell back to Zarr"
            values = ours_arr[:]  # decoded through Zarr (checks every chunk's Zstd checksum / crc32c)
            for i in range(schema.num_shards):
                rows = schema.shard_rows(i)
                theirs_arr[rows.start:rows.stop] = values[rows.start:rows.stop]
                mine, zarrs = _shard_bytes(ours, ours_arr, i), _shard_bytes(theirs, theirs_arr, i)
                assert mine is not None and mine == zarrs, f"{spec.name}/{comp} shard {i} differs from Zarr's"
                sizes = layout.shard_chunk_nbytes(ours, ours_arr, i, schema.shard_size)
                assert (sizes[:len(rows)] > 0).all() and (sizes[len(rows):] == -1).all()
                compared += 1
    assert compared == schema.num_shards * sum(len(components(s)) for s in schema.targets)
    report = verify_cache(tmp_path / "ours")
    assert report.ok, report


def test_arrays_with_other_codecs_are_written_through_zarr(tmp_path):
    schema, writer, data = make_cache(tmp_path / "c", num_samples=6, shard_size=4, only=("heatmap", "boxes"))
    root = layout.open_root(writer.store, writable=True)[0]
    spec = schema.target("heatmap")
    (shape, dtype), = components(spec).values()
    root.create_array(layout.array_path("heatmap", "data"), shape=(schema.num_rows, *shape), dtype=dtype,
                      chunks=(1, *shape), shards=(schema.shard_size, *shape), compressors=[GzipCodec(level=1)],
                      fill_value=0, overwrite=True, config={"write_empty_chunks": True})
    writer = CacheWriter.open(tmp_path / "c")
    gzip_array = layout.open_arrays(root, schema)["heatmap"]["data"]
    assert layout.shard_encoding(gzip_array) is None
    assert layout.shard_encoding(layout.open_arrays(root, schema)["boxes"]["data"]) is not None
    reports = [writer.write_shard(i, [RowResult(sample_token=t, view=v, targets=data[t, v])
                                      for t, v in writer.shard_rows(i)]) for i in range(schema.num_shards)]
    reader = CacheReader(tmp_path / "c", targets=["boxes"])  # the reader itself only knows Zstd / crc32c
    stored = gzip_array[:]  # read back through Zarr's Gzip
    for (token, view), want in data.items():
        np.testing.assert_array_equal(reader.read(token, view).boxes, want.boxes)
        r = writer.row_index(token, view)
        np.testing.assert_allclose(stored[r] / 255.0, want.heatmap, atol=1 / 510 + 1e-7)
    for i, report in enumerate(reports):  # sizes of the Zarr-written array come from its stored index
        sizes = layout.shard_chunk_nbytes(writer.store, gzip_array, i, schema.shard_size)
        assert report.nbytes["heatmap"] == int(np.maximum(sizes, 0).sum()) > 0


def test_to_float16_is_numpys_cast_bit_for_bit():
    rng = np.random.default_rng(3)
    k = np.arange(0, 1025)
    for dtype in (np.float32, np.float64):
        ties = ((k + 0.5) * 2.0 ** -24).astype(dtype)  # halfway between float16 subnormals: to even
        x = np.concatenate([
            (rng.standard_normal(20000) * 10.0 ** rng.uniform(-12, 4, 20000)).astype(dtype), ties, -ties,
            np.array([0.0, -0.0, 2.0 ** -14, -(2.0 ** -14), 2.0 ** -25, 3 * 2.0 ** -26, 65504.0, 1e-45], dtype)])
        x = x[np.abs(x) <= 65504].reshape(1, -1)
        got, want = to_float16(x), x.astype(np.float16)
        assert got.dtype == np.float16 and got.shape == x.shape
        np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    assert (np.abs(ties) < 2.0 ** -14).sum() > 1000  # the subnormal path really ran


def test_parallel_row_compression_writes_the_same_bytes(tmp_path):
    """encode_shard with threads: each row is its own Zstd chunk, so compressing rows in parallel
    must give the exact bytes of the single-threaded path (shard >= PARALLEL_MIN_BYTES, so the
    threaded branch really runs), and the bytes Zarr decodes back to the rows."""
    schema, writer, _ = make_cache(tmp_path / "c", num_samples=4, shard_size=4)
    spec = next(s for s in schema.targets if s.name.startswith("bev_features"))
    array = layout.open_arrays(layout.open_root(stores.open_store(tmp_path / "c"))[0], schema)[spec.name]["data"]
    encoding = layout.shard_encoding(array)
    assert encoding is not None and encoding.zstd is not None
    rng = np.random.default_rng(0)
    row_bytes = int(np.prod(array.shape[1:])) * encoding.dtype.itemsize
    rows = max(2, -(-layout.PARALLEL_MIN_BYTES // row_bytes))
    enc = layout.ShardEncoding(dtype=encoding.dtype, shard_size=rows + 1, zstd=encoding.zstd)
    block = (rng.standard_normal((rows, *array.shape[1:])) * 50).astype(encoding.dtype)
    assert block.nbytes >= layout.PARALLEL_MIN_BYTES
    one, sizes1 = layout.encode_shard(enc, block, threads=1)
    four, sizes4 = layout.encode_shard(enc, block, threads=4)
    assert one == four and np.array_equal(sizes1, sizes4) and sizes1[-1] == -1 and (sizes1[:-1] > 0).all()
    # the chunks decode to the rows (not trivially equal empty output)
    start = 0
    for r in range(rows):
        raw = encoding.zstd.decode(one[start:start + int(sizes1[r])])
        assert np.array_equal(np.frombuffer(raw, encoding.dtype).reshape(block.shape[1:]), block[r])
        start += int(sizes1[r])
