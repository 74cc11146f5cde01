"""Test/bench helper: a small teacher-target cache written by the real cache job (plain loop).

:func:`write_teacher_cache` plans the cache (:func:`pipeline.cache_plan.plan_cache`) and runs
:func:`pipeline.cache_job.process_shard` over every shard, so tests read exactly what
``bevkd cache`` writes (rows from :func:`teachers.cache_row.build_cache_row`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.cache_job import CacheJobConfig, process_shard
from pipeline.cache_plan import plan_cache
from storage.cache import Codec, TeacherInfo
from teachers.registry import weights_sha256

#: Codecs that decode to exactly what was written (float32 teacher outputs; bools bit-packed).
LOSSLESS = {"bev_features": Codec(kind="float32"), "heatmap": Codec(kind="float32"),
            "instance_features": Codec(kind="float32"), "lidar_depth": Codec(kind="float32"),
            "depth_probs": Codec(kind="float32")}


def write_teacher_cache(location: str | Path, reader, teacher: torch.nn.Module, *, image_size: tuple[int, int],
                        depth_stride: int = 16, codecs: dict[str, Codec] | None = None, views: int = 0,
                        max_boxes: int = 100, teacher_name: str = "centerpoint") -> Path:
    """Run the cache job with the loaded ``teacher`` over every sample of ``reader`` into a fresh
    cache at ``location`` (``views`` BEV-augmented views per sample besides the plain one, drawn
    by the job's default BEV augmentation).

    Args:
        image_size: ``(w, h)`` of the student's images (the depth maps and view masks use it).
    """
    config = CacheJobConfig(image_size=image_size, depth_stride=depth_stride, codecs=dict(codecs or {}), views=views,
                            max_boxes=max_boxes, shard_size=4,
                            batch_size=1, image_check="none")
    info = TeacherInfo(name=teacher_name, weights_sha256=weights_sha256(teacher))
    writer = plan_cache(str(location), reader, teacher, info, config, overwrite=True)
    for shard in range(writer.schema.num_shards):
        result = process_shard(teacher, reader, writer, shard, config)
        assert not result.rows_failed, result.errors
    return Path(location)
