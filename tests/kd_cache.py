"""Test/bench helper: write a small teacher-target cache with the real writer and a real teacher.

(The Ray cache job in ``pipeline`` does the same at scale; this is its per-row work, kept tiny.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from storage.cache import CacheSchema, CacheWriter, Codec, RowResult, TeacherInfo, target_specs_for
from storage.targets import SampleTargets
from student.dataset import dataset_info_of
from teachers.input import TeacherInput
from teachers.targets import build_lidar_targets

#: Codecs that decode to exactly what was written (float32 teacher outputs; bools bit-packed).
LOSSLESS = {"bev_features": Codec(kind="float32"), "heatmap": Codec(kind="float32"),
            "instance_features": Codec(kind="float32"), "lidar_depth": Codec(kind="float32"),
            "depth_probs": Codec(kind="float32")}


def teacher_row(teacher: torch.nn.Module, sample, *, image_size: tuple[int, int], depth_stride: int = 16,
                view_matrix: np.ndarray | None = None) -> SampleTargets:
    """One row: the teacher on the sample's points (moved by ``view_matrix`` for an augmented
    view) plus the network-free LiDAR targets (computed in the lidar frame, then warped by the
    caller's view only through the points for masks that depend on them)."""
    pts = np.asarray(sample.points[:, :5], dtype=np.float32).copy()
    vm = np.eye(4) if view_matrix is None else np.asarray(view_matrix, np.float64)
    pts[:, :3] = (pts[:, :3].astype(np.float64) @ vm[:3, :3].T + vm[:3, 3]).astype(np.float32)
    with torch.no_grad():
        out = teacher(TeacherInput(points=[torch.from_numpy(pts)]))
    row = out.sample_targets(0)
    lidar = build_lidar_targets(sample, out.bev_grid, depth_stride, image_size)
    row.lidar_depth = lidar.lidar_depth
    if view_matrix is None:
        row.fg_mask, row.view_mask = lidar.fg_mask, lidar.view_mask
    row.view_matrix = vm
    return row


def write_teacher_cache(location: str | Path, reader, teacher: torch.nn.Module, *, image_size: tuple[int, int],
                        depth_stride: int = 16, codecs: dict[str, Codec] | None = None,
                        view_matrices: list[np.ndarray] | None = None, max_boxes: int = 100,
                        teacher_name: str = "centerpoint") -> Path:
    """Run ``teacher`` over every sample of ``reader`` and commit the rows (K views when
    ``view_matrices`` is given: view 0 must be the identity; augmented views store no masks)."""
    views = view_matrices or [np.eye(4)]
    tokens = list(reader.sample_tokens)
    rows = {}
    for tok in tokens:
        sample = reader.read(tok)
        for v, vm in enumerate(views):
            rows[(tok, v)] = teacher_row(teacher, sample, image_size=image_size, depth_stride=depth_stride,
                                         view_matrix=None if v == 0 else vm)
    only = None
    if len(views) > 1:  # masks are only stored when every view has them
        only = tuple(n for n in [s.name for s in target_specs_for(rows[(tokens[0], 0)], max_boxes=max_boxes)]
                     if n not in ("fg_mask", "view_mask"))
    specs = target_specs_for(rows[(tokens[0], 0)], max_boxes=max_boxes, codecs=codecs, only=only)
    schema = CacheSchema(grid=teacher.out_grid, teacher=TeacherInfo(name=teacher_name), dataset=dataset_info_of(reader),
                         targets=specs, num_rows=len(tokens) * len(views), views=len(views), shard_size=4)
    writer = CacheWriter.create(str(location), schema, tokens, overwrite=True)
    for i in range(schema.num_shards):
        writer.write_shard(i, [RowResult(sample_token=t, view=v, targets=rows[(t, v)]) for t, v in writer.shard_rows(i)])
    return Path(location)
