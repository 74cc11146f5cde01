"""Helpers of the cache-job tests (no tests here): a tiny pure-torch BEV teacher that Ray workers
import as ``test_cache_job_support:tiny_bev_teacher`` (the spconv teacher's import alone takes
~15 s per process), tiny generated datasets and a row-by-row cache comparison."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from storage.cache import CacheReader
from storage.grid import DEMO_GRID
from teachers.centerhead import CenterHead, CenterHeadConfig, decode_boxes, merge_heatmaps
from teachers.centerpoint import sample_bev
from teachers.input import TeacherInput
from teachers.output import TeacherOutput


class TinyBEVTeacher(nn.Module):
    """Points -> per-cell (log count, mean z, max z, mean intensity) on a 32x32 BEV grid (DEMO_GRID
    at stride 8) -> one conv -> CenterHead (CenterPoint §3). Untrained; deterministic given its seed."""

    def __init__(self, delay_s: float = 0.0, crash_armed: str | None = None) -> None:
        super().__init__()
        self.crash_armed = crash_armed
        self.out_grid = DEMO_GRID.with_stride(8)
        self.delay_s = delay_s
        self.conv = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU())
        self.head = CenterHead(CenterHeadConfig(in_channels=16, shared_channels=16, head_channels=16))

    def bev(self, points: torch.Tensor) -> torch.Tensor:
        g = self.out_grid
        h, w = g.bev_shape
        x0, y0 = g.point_cloud_range[0], g.point_cloud_range[1]
        col = torch.floor((points[:, 0] - x0) / g.voxel_size[0]).long()
        row = torch.floor((points[:, 1] - y0) / g.voxel_size[1]).long()
        ok = (col >= 0) & (col < w) & (row >= 0) & (row < h)
        idx, p = row[ok] * w + col[ok], points[ok]
        count = torch.zeros(h * w).index_add_(0, idx, torch.ones(len(idx)))
        zsum = torch.zeros(h * w).index_add_(0, idx, p[:, 2])
        isum = torch.zeros(h * w).index_add_(0, idx, p[:, 3])
        zmax = torch.full((h * w,), -5.0).scatter_reduce_(0, idx, p[:, 2], reduce="amax")
        n = count.clamp(min=1)
        return torch.stack([torch.log1p(count), zsum / n, zmax, isum / n / 255]).view(4, h, w)

    def forward(self, batch: TeacherInput) -> TeacherOutput:
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.crash_armed is not None and batch.batch_size > 1:
            try:
                os.remove(self.crash_armed)  # exactly one process wins the armed file ...
            except FileNotFoundError:
                pass
            else:
                os._exit(17)  # ... and dies like a segfaulting worker
        feat = self.conv(torch.stack([self.bev(p) for p in batch.points]))
        maps = self.head(feat)
        boxes, scores, labels = decode_boxes(maps, self.out_grid, score_threshold=0.1, max_boxes=40)
        return TeacherOutput(bev_grid=self.out_grid, bev_features={"lidar_bev": feat},
                             heatmap=merge_heatmaps(maps, 10), boxes=boxes, scores=scores, labels=labels,
                             instance_features=sample_bev(feat, self.out_grid, boxes))


def tiny_bev_teacher() -> nn.Module:
    return TinyBEVTeacher()


def slow_tiny_bev_teacher() -> nn.Module:
    """The tiny teacher taking >= 0.3 s per forward (so a job can be killed mid-run)."""
    return TinyBEVTeacher(delay_s=0.3)


class NaNHeatmapTeacher(TinyBEVTeacher):
    """The tiny teacher with a NaN in the heatmap of every sample with an even number of points."""

    def forward(self, batch: TeacherInput) -> TeacherOutput:
        out = super().forward(batch)
        for i, p in enumerate(batch.points):
            if len(p) % 2 == 0:
                out.heatmap[i, 0, 0, 0] = float("nan")
        return out


def nan_tiny_bev_teacher() -> nn.Module:
    return NaNHeatmapTeacher()


def crashing_tiny_bev_teacher() -> nn.Module:
    """The tiny teacher whose process exits (os._exit) in the first batched forward after the file
    ``$BEVKD_TEST_TMP/crash-armed`` was created (once: the crash removes the file)."""
    return TinyBEVTeacher(crash_armed=os.path.join(os.environ["BEVKD_TEST_TMP"], "crash-armed"))


def make_dataset(root: Path, num_scenes: int = 2, samples_per_scene: int = 4, seed: int = 11) -> Path:
    """A small generated nuScenes-format dataroot (``mini_val`` holds the first two scenes)."""
    from storage.synth import SynthConfig, generate_dataset

    config = SynthConfig(num_scenes=num_scenes, samples_per_scene=samples_per_scene, seed=seed,
                         image_size=(160, 90), lidar_beams=16, azimuth_steps=360)
    return generate_dataset(config, root)


def copy_dataset(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def assert_same_caches(a: str | Path, b: str | Path) -> int:
    """Assert two caches hold the same rows: identical manifests (status, error, view matrix and the
    crc32c of every target's stored bytes) and equal decoded lossless targets. Returns rows compared."""
    ra, rb = CacheReader(a), CacheReader(b)
    assert ra.schema.to_dict() == rb.schema.to_dict()
    ta, tb = ra.rows.to_pydict(), rb.rows.to_pydict()
    assert len(ta["row"]) == ra.schema.num_rows
    for col in ta:
        if not col.startswith("nbytes:"):
            assert ta[col] == tb[col], f"manifest column {col} differs"
    lossless = [s.name for s in ra.schema.targets if s.codec.lossless]
    assert "boxes" in lossless and "fg_mask" in lossless
    for row in ra.ok_rows:
        xa, xb = ra.read(int(row)), rb.read(int(row))
        for name in lossless:
            for attr in (("boxes", "scores", "labels") if name == "boxes" else (name,)):
                va, vb = getattr(xa, attr), getattr(xb, attr)
                assert va.tobytes() == vb.tobytes(), f"row {row} target {attr} differs"
    return len(ta["row"])


def manifest_rows(location: str | Path) -> list[tuple[int, str, int, str]]:
    """``(row, sample_token, view, status)`` of every committed row, over all fragments (duplicates kept)."""
    import pyarrow.parquet as pq

    out = []
    for frag in sorted(Path(location, "manifest").glob("shard-*.parquet")):
        t = pq.read_table(frag).to_pydict()
        out += list(zip(t["row"], t["sample_token"], t["view"], t["status"], strict=True))
    return out


def view_mask_flip_check(mask0: np.ndarray, mask_flipped: np.ndarray) -> bool:
    """True when ``mask_flipped`` is ``mask0`` mirrored in x (columns), the exact effect of ``x -> -x``
    on a grid symmetric about x = 0."""
    return bool(np.array_equal(mask0[..., ::-1], mask_flipped))
