"""The teacher-target cache: a versioned Zarr v3 store with a Parquet manifest.

What a teacher computed once, kept small (per-target codecs), safe (per-shard commit records,
checksums) and fast to stream. Modules: :mod:`~storage.cache.schema` (what is stored),
:mod:`~storage.cache.codecs` (how values are encoded), :mod:`~storage.cache.stores` (local dirs,
fsspec URLs, Zarr stores), :mod:`~storage.cache.layout` (Zarr arrays and keys),
:mod:`~storage.cache.manifest` (commit records), :mod:`~storage.cache.writer`,
:mod:`~storage.cache.reader` (with :mod:`~storage.cache.chunks`, its fast path),
:mod:`~storage.cache.verify`, :mod:`~storage.cache.inspect` and :mod:`~storage.cache.synthetic`
(targets with realistic statistics for tests and benches).

Quick start::

    schema = CacheSchema(grid=grid, teacher=TeacherInfo(name=...), dataset=DatasetInfo(...),
                         targets=target_specs_for(example_targets), num_rows=len(tokens))
    writer = CacheWriter.create(path_or_url, schema, tokens)
    writer.write_shard(0, [RowResult(sample_token=t, view=v, targets=...) for t, v in writer.shard_rows(0)])
    reader = CacheReader(path_or_url, expect_grid=grid, expect_dataset=schema.dataset)
    row = reader.read(tokens[0], decode=False)       # uint8 + scales; dequantize(...) later, on the GPU

Importing this package imports zarr and pyarrow (not torch).
"""

from storage.cache.codecs import (QuantizedArray, TargetValueError, dequantize, quantize_per_channel,
                                  quantize_sqrt_per_channel)
from storage.cache.reader import CachedTargets, CacheReader
from storage.cache.schema import (DEFAULT_CODECS, SCHEMA_VERSION, CacheSchema, Codec, DatasetInfo, TargetSpec,
                                  TeacherInfo, target_specs_for)
from storage.cache.writer import CacheWriter, RowResult, ShardReport

__all__ = ["CacheReader", "CacheSchema", "CacheWriter", "CachedTargets", "Codec", "DEFAULT_CODECS",
           "DatasetInfo", "QuantizedArray", "RowResult", "SCHEMA_VERSION", "ShardReport", "TargetSpec",
           "TargetValueError", "TeacherInfo", "dequantize", "quantize_per_channel",
           "quantize_sqrt_per_channel", "target_specs_for"]
