"""The teacher-target cache: a versioned Zarr v3 store with a Parquet manifest.

What a teacher computed once, kept small (per-target codecs), safe (per-shard commit records,
checksums) and fast to stream. Modules: :mod:`~storage.cache.schema` (what is stored),
:mod:`~storage.cache.codecs` (how values are encoded), :mod:`~storage.cache.layout` (Zarr
arrays and keys), :mod:`~storage.cache.manifest` (commit records), :mod:`~storage.cache.writer`,
:mod:`~storage.cache.reader`, :mod:`~storage.cache.verify` and :mod:`~storage.cache.inspect`.

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
