"""``view_masks`` speed at nuScenes scale: the column-interval implementation against the per-point
reference it replaced (``tests/test_view_masks_fast.py: reference_view_masks``), in one run.

Setup: the real keyframe's six calibrations (../shared), intrinsics scaled to 704x256, the
``centerpoint_voxel0075`` BEV grid (``NUSCENES_GRID.with_stride(8)``: 180x180 cells, 40 z centres).
Prints ms per sample (six cameras) of each, the ratio (goal >= 5), and whether the masks are equal.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/view_masks.py [--repeat 5]``
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path[:0] = [os.path.dirname(_HERE), os.path.join(os.path.dirname(_HERE), "tests")]

import argparse  # noqa: E402
import timeit  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

KEYFRAME_INFO = (Path(_HERE).parents[1] / "shared" / "data" / "nuscenes_keyframes"
                 / "mmdet3d_v1.1_scene-0061_sample0.pkl")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timings per implementation (the best is kept)")
    args = parser.parse_args(argv)
    if not KEYFRAME_INFO.exists():
        print(f"real keyframe missing: {KEYFRAME_INFO}", file=sys.stderr)
        return 2
    from storage.mmdet3d_reader import Mmdet3dInfoReader
    from teachers.cache_row import scaled_cameras, view_masks
    from test_view_masks_fast import NUSCENES_BEV, reference_view_masks

    ks, l2c = scaled_cameras(Mmdet3dInfoReader(KEYFRAME_INFO).read(0), (704, 256))
    times, masks = {}, {}
    for name, fn in (("reference (per point)", reference_view_masks), ("view_masks (per column)", view_masks)):
        masks[name] = fn(ks, l2c, (704, 256), NUSCENES_BEV)
        times[name] = min(timeit.repeat(lambda fn=fn: fn(ks, l2c, (704, 256), NUSCENES_BEV), number=1,
                                        repeat=args.repeat))
        print(f"{name}: {1e3 * times[name]:.1f} ms per sample (6 cameras, {NUSCENES_BEV.bev_shape[0]}x"
              f"{NUSCENES_BEV.bev_shape[1]} cells x {len(NUSCENES_BEV.z_centers())} heights)")
    ref, new = masks.values()
    print(f"speed-up: {times['reference (per point)'] / times['view_masks (per column)']:.1f}x (goal >= 5); "
          f"masks equal: {bool(np.array_equal(ref, new))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
