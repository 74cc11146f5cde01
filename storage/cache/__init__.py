"""The teacher-target cache: a versioned Zarr v3 store with a Parquet manifest.

What a teacher computed once, kept small (per-target codecs), safe (per-shard commit records,
checksums) and fast to stream. Modules: :mod:`~storage.cache.fields` (the target-field table and
codec names), :mod:`~storage.cache.schema` (what one cache stores),
:mod:`~storage.cache.row` (one row, :class:`CacheRow`),
:mod:`~storage.cache.codecs` (how values are encoded), :mod:`~storage.cache.stores` (local dirs,
fsspec URLs, Zarr stores), :mod:`~storage.cache.layout` (Zarr arrays and keys),
:mod:`~storage.cache.shard_index` (the chunk index of a shard),
:mod:`~storage.cache.manifest` (commit records), :mod:`~storage.cache.writer`,
:mod:`~storage.cache.reader` (with :mod:`~storage.cache.chunks`, its fast path),
:mod:`~storage.cache.verify` and :mod:`~storage.cache.inspect`. Zarr's private API is used
only through :mod:`~storage.cache._zarr_private`.

Quick start::

    schema = CacheSchema(grid=grid, teacher=TeacherInfo(name=...), dataset=DatasetInfo(...),
                         targets=target_specs_for(example_row), num_rows=len(tokens))
    writer = CacheWriter.create(path_or_url, schema, tokens)
    writer.write_shard(0, [RowResult(sample_token=t, view=v, targets=...) for t, v in writer.shard_rows(0)])
    reader = CacheReader(path_or_url, expect_grid=grid, expect_dataset=schema.dataset)
    row = reader.read(tokens[0], decode=False)       # uint8 + scales; dequantize(...) later, on the GPU

Importing this package imports zarr and pyarrow (not torch).
"""

from storage.cache.codecs import (QuantizedArray, TargetValueError, dequantize, quantize_per_channel,
                                  quantize_sqrt_per_channel)
from storage.cache.reader import CacheReader
from storage.cache.row import CacheRow
from storage.cache.schema import (DEFAULT_CODECS, SCHEMA_VERSION, TARGET_FIELDS, CacheSchema, Codec, DatasetInfo,
                                  TargetField, TargetSpec, TeacherInfo, target_specs_for)
from storage.cache.writer import CacheWriter, RowResult, ShardReport

__all__ = ["CacheReader", "CacheSchema", "CacheWriter", "CacheRow", "Codec", "DEFAULT_CODECS",
           "DatasetInfo", "QuantizedArray", "RowResult", "SCHEMA_VERSION", "ShardReport", "TARGET_FIELDS",
           "TargetField", "TargetSpec",
           "TargetValueError", "TeacherInfo", "dequantize", "quantize_per_channel",
           "quantize_sqrt_per_channel", "target_specs_for"]
