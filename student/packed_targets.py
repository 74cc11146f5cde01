"""Teacher targets in flight: packed small on the loader side, decoded late on the training device.

A DataLoader worker reads a cache row with ``CacheReader.read(..., decode=False)``: uint8 maps
stay :class:`storage.cache.QuantizedArray` (codes + per-channel scale/offset), float16 stays
float16, masks are bool. :func:`collate_targets` stacks rows into a :class:`PackedTargets` of
torch tensors in those small dtypes, so what crosses the worker -> trainer queue (shared memory)
is ~4x smaller than float32. :func:`unpack_targets` moves them to the device and dequantises
there (``code ** power * scale + offset``, :func:`storage.cache.dequantize`).

:func:`align_targets` then brings the targets into the student's augmented frames (the same
code for cached and live-teacher targets, so "cached = online" is one equality):

* BEV maps, heatmaps and masks by ``residual_bev`` (``student_aug @ inverse(view_matrix)``,
  :func:`student.augment.residual_transform`), with the semantics of :meth:`TeacherTargets.warped`
  (bilinear maps, nearest masks, boxes moved with their yaw and velocity) but one sampling grid
  and one ``grid_sample`` per dtype for the whole batch (:func:`warp_bev_targets`);
* per-camera LiDAR depth by ``residual_img`` (student ``img_aug`` relative to the image geometry
  the cache's depth maps were built for), min-preserving (:func:`student.augment.warp_depth`);
  teacher depth distributions are resampled bilinearly (a convex mix stays a distribution).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from storage.cache import CacheRow, QuantizedArray, dequantize
from storage.cache.schema import BEV_PREFIX, fields_where
from storage.grid import BEVGrid
from student.augment import bev_sampling_grid, warp_boxes, warp_depth, warp_images
from student.losses.teacher_targets import DENSE_ATTRS, RAGGED_ATTRS, TeacherShapes, TeacherTargets


@dataclass(kw_only=True, eq=False)
class PackedTargets:
    """A batch of B target rows in their stored dtypes (torch tensors, CPU until :meth:`to`).

    Attributes:
        bev_grid: grid of the BEV maps (the cache's grid).
        dense: field name (``bev_features/<stage>``, ``heatmap``, ``lidar_depth``, ``depth_probs``,
            ``fg_mask``, ``view_mask``) -> ``(B, ...)`` tensor (float16/float32/bool), or a
            :class:`QuantizedArray` of ``(B, C, ...)`` uint8 codes with ``(B, C)`` scale/offset.
        ragged: ``boxes`` ``(M_i, 9)`` float32, ``scores`` ``(M_i,)``, ``labels`` ``(M_i,)`` int64,
            ``instance_features`` ``(M_i, C)`` float16/32: one tensor per sample.
        residual_bev: ``(B, 4, 4)`` float64, student's augmented lidar frame <- the row's BEV frame.
        residual_img: ``(B, 6, 3, 3)`` float64, student's augmented pixels <- the pixels the
            cached depth maps were built for.
        depth_out_size: ``(h, w)`` cells of the aligned per-camera depth maps.
        depth_stride: pixels per cell of the cached depth maps (and of the aligned ones).
    """

    bev_grid: BEVGrid
    dense: dict[str, Any] = field(default_factory=dict)
    ragged: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    residual_bev: torch.Tensor | None = None
    residual_img: torch.Tensor | None = None
    depth_out_size: tuple[int, int] | None = None
    depth_stride: float = 16.0

    def nbytes(self) -> int:
        """Bytes of every tensor (what a worker ships per batch)."""
        total = 0
        for v in self.dense.values():
            for t in (v if isinstance(v, QuantizedArray) else (v,)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total + sum(t.numel() * t.element_size() for ts in self.ragged.values() for t in ts)

    def pin_memory(self) -> PackedTargets:
        """Page-locked copies (DataLoader ``pin_memory=True`` calls this) for asynchronous GPU copies."""
        def pin(t: Any) -> Any:
            return t.pin_memory() if isinstance(t, torch.Tensor) else t

        return PackedTargets(bev_grid=self.bev_grid,
                             dense={k: (QuantizedArray(*(pin(x) for x in v))
                                        if isinstance(v, QuantizedArray) else pin(v))
                                    for k, v in self.dense.items()},
                             ragged={k: [pin(t) for t in ts] for k, ts in self.ragged.items()},
                             residual_bev=self.residual_bev, residual_img=self.residual_img,
                             depth_out_size=self.depth_out_size, depth_stride=self.depth_stride)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PackedTargets:
        """A copy with the dense and ragged tensors on ``device`` (residuals stay on the CPU)."""
        def mv(t: Any) -> Any:
            return t.to(device, non_blocking=non_blocking) if isinstance(t, torch.Tensor) else t

        dense = {k: (QuantizedArray(*(mv(x) for x in v)) if isinstance(v, QuantizedArray) else mv(v))
                 for k, v in self.dense.items()}
        return PackedTargets(bev_grid=self.bev_grid, dense=dense,
                             ragged={k: [mv(t) for t in ts] for k, ts in self.ragged.items()},
                             residual_bev=self.residual_bev, residual_img=self.residual_img,
                             depth_out_size=self.depth_out_size, depth_stride=self.depth_stride)


#: Dense targets on the BEV grid warped bilinearly (maps) / nearest (masks), from the target-field table.
_BEV_BILINEAR = {a for f in fields_where(warp="bilinear", bev_map=True) for a in f.row_attrs}
_BEV_NEAREST = {a for f in fields_where(warp="nearest", bev_map=True) for a in f.row_attrs}


def row_fields(row: CacheRow) -> dict[str, Any]:
    """Field name -> value of a cache row (:meth:`storage.cache.CacheRow.arrays`); absent targets are left out."""
    return row.arrays()


def _stack(name: str, values: Sequence[Any]) -> Any:
    if isinstance(values[0], QuantizedArray):
        powers = {int(v.power) for v in values}
        if len(powers) != 1:
            raise ValueError(f"collate_targets: {name} rows mix companding powers {sorted(powers)}")
        return QuantizedArray(torch.from_numpy(np.stack([v.data for v in values])),
                              torch.from_numpy(np.stack([v.scale for v in values]).astype(np.float32)),
                              torch.from_numpy(np.stack([v.offset for v in values]).astype(np.float32)),
                              powers.pop())
    return torch.from_numpy(np.stack([np.asarray(v) for v in values]))


def collate_targets(rows: Sequence[Any], bev_grid: BEVGrid, residual_bev: np.ndarray, residual_img: np.ndarray,
                    depth_out_size: tuple[int, int] | None, depth_stride: float) -> PackedTargets:
    """Stack B rows (:class:`storage.cache.CacheRow`, read with ``decode=False`` or built by the loader).

    Only targets present in every row are kept (a row's fields are those of its cache).

    Args:
        rows: B rows, all from the same cache (same targets and codecs).
        residual_bev: ``(B, 4, 4)``; residual_img: ``(B, 6, 3, 3)`` (see :class:`PackedTargets`).

    Raises:
        ValueError: rows of one batch disagree on the codec of a target.
    """
    per_row = [row_fields(r) for r in rows]
    names = set.intersection(*(set(f) for f in per_row)) if per_row else set()
    dense = {n: _stack(n, [f[n] for f in per_row]) for n in sorted(names) if n not in RAGGED_ATTRS}
    ragged = {n: [torch.from_numpy(np.ascontiguousarray(f[n])) for f in per_row]
              for n in sorted(names) if n in RAGGED_ATTRS}
    return PackedTargets(bev_grid=bev_grid, dense=dense, ragged=ragged,
                         residual_bev=torch.as_tensor(np.asarray(residual_bev), dtype=torch.float64),
                         residual_img=torch.as_tensor(np.asarray(residual_img), dtype=torch.float64),
                         depth_out_size=depth_out_size, depth_stride=float(depth_stride))


def _decoded(value: Any) -> torch.Tensor:
    if isinstance(value, QuantizedArray):
        data, scale, offset, power = value
        if isinstance(data, torch.Tensor) and int(power) in (1, 2):  # fused: one conversion, one addcmul
            x = data.float()
            x = x * x if int(power) == 2 else x
            extra = (1,) * (data.ndim - scale.ndim)
            return torch.addcmul(offset.reshape(*offset.shape, *extra), x, scale.reshape(*scale.shape, *extra))
        return dequantize(value)
    return value if value.dtype == torch.bool else value.float()


def unpack_targets(packed: PackedTargets, device: torch.device | str) -> TeacherTargets:
    """Move to ``device`` and dequantise there: uint8 -> float32, float16 -> float32 (still in
    the rows' own frames; see :func:`align_targets`)."""
    p = packed.to(device, non_blocking=True)
    d = {k: _decoded(v) for k, v in p.dense.items()}
    ragged = {k: [t.float() if t.is_floating_point() else t.long() for t in ts] for k, ts in p.ragged.items()}
    targets: dict[str, Any] = {a: d.get(a) for a in DENSE_ATTRS} | {a: ragged.get(a, []) for a in RAGGED_ATTRS}
    return TeacherTargets(bev_grid=p.bev_grid,
                          bev_features={k[len(BEV_PREFIX):]: v for k, v in d.items() if k.startswith(BEV_PREFIX)},
                          **targets)


def _is_identity(m: torch.Tensor | None) -> bool:
    """True for None or a batch of identity matrices."""
    return m is None or bool(torch.allclose(m, torch.eye(m.shape[-1], dtype=m.dtype).expand_as(m), atol=1e-9))


def align_targets(t: TeacherTargets, residual_bev: torch.Tensor | None, residual_img: torch.Tensor | None,
                  depth_out_size: tuple[int, int] | None, depth_stride: float = 16.0) -> TeacherTargets:
    """Targets in the student's augmented BEV and image frames (module docstring).

    Args:
        t: targets in the rows' frames (cached view frame; cache image geometry).
        residual_bev: ``(B, 4, 4)`` float64 or None (identity); warps are skipped for identities.
        residual_img: ``(B, 6, 3, 3)`` float64 pixel transform or None.
        depth_out_size: ``(h, w)`` of the aligned depth maps (``None`` keeps the input size).
        depth_stride: pixels per depth-map cell, input and output.
    """
    out = t if residual_bev is None or _is_identity(residual_bev) else warp_bev_targets(t, residual_bev)
    same_size = depth_out_size is None or (t.lidar_depth is None
                                           or tuple(t.lidar_depth.shape[-2:]) == tuple(depth_out_size))
    if _is_identity(residual_img) and same_size:
        return out
    if residual_img is None:
        raise ValueError(f"align_targets: resizing depth maps to {depth_out_size} needs residual_img")
    a = residual_img.reshape(-1, 3, 3)
    ref = t.lidar_depth if t.lidar_depth is not None else t.depth_probs
    if depth_out_size is not None:
        size = (int(depth_out_size[0]), int(depth_out_size[1]))
    elif ref is not None:
        size = (int(ref.shape[-2]), int(ref.shape[-1]))
    else:
        return out
    if out.lidar_depth is not None:
        b, n, h, w = out.lidar_depth.shape
        warped = warp_depth(out.lidar_depth.reshape(b * n, h, w), a.to(out.lidar_depth.device), size,
                            src_stride=depth_stride, dst_stride=depth_stride)
        out = replace(out, lidar_depth=warped.reshape(b, n, *size))
    if out.depth_probs is not None:
        b, n, dbins, h, w = out.depth_probs.shape
        cells = torch.diag(torch.tensor([1.0 / depth_stride, 1.0 / depth_stride, 1.0], dtype=torch.float64))
        a_cells = cells @ a @ torch.linalg.inv(cells)  # the same transform in cell units
        probs = warp_images(out.depth_probs.reshape(b * n, dbins, h, w), a_cells.to(out.depth_probs.device), size)
        out = replace(out, depth_probs=probs.reshape(b, n, dbins, *size))
    return out


def warp_bev_targets(t: TeacherTargets, residual_bev: torch.Tensor) -> TeacherTargets:
    """BEV part of :func:`align_targets`: one bilinear ``grid_sample`` for every float map
    (features and heatmap concatenated), one nearest for every mask, boxes moved by
    :func:`storage.boxes.transform_boxes` (centre, yaw, velocity; instance features travel
    with their boxes). Cells coming from outside the grid become 0 / False."""
    bilinear = [a for a in DENSE_ATTRS if a in _BEV_BILINEAR]
    maps = {BEV_PREFIX + k: v for k, v in t.bev_features.items()}
    maps |= {a: getattr(t, a) for a in bilinear if getattr(t, a) is not None}
    masks = {a: getattr(t, a) for a in DENSE_ATTRS if a in _BEV_NEAREST and getattr(t, a) is not None}
    ref = next(iter(maps.values()), next(iter(masks.values()), None))
    changes: dict[str, Any] = {}
    if ref is not None:
        coords = bev_sampling_grid(residual_bev, t.bev_grid, device=ref.device)
        if maps:
            stacked = torch.cat(list(maps.values()), dim=1)
            warped = torch.nn.functional.grid_sample(stacked, coords.to(stacked.dtype), mode="bilinear",
                                                     padding_mode="zeros", align_corners=False)
            parts = dict(zip(maps, warped.split([m.shape[1] for m in maps.values()], dim=1), strict=True))
            changes.update({a: parts.get(a) for a in bilinear})
            changes["bev_features"] = {k[len(BEV_PREFIX):]: v for k, v in parts.items() if k.startswith(BEV_PREFIX)}
        if masks:
            flat = torch.cat([m.reshape(m.shape[0], -1, *m.shape[-2:]) for m in masks.values()], dim=1).float()
            warped = torch.nn.functional.grid_sample(flat, coords, mode="nearest", padding_mode="zeros",
                                                     align_corners=False) > 0.5
            sizes = [int(np.prod(m.shape[1:-2])) for m in masks.values()]
            for (k, m), part in zip(masks.items(), warped.split(sizes, dim=1), strict=True):
                changes[k] = part.reshape(m.shape)
    mats = residual_bev.cpu().numpy()
    for f in fields_where(warp="boxes"):
        a = f.row_attrs[0]
        changes[a] = [torch.as_tensor(warp_boxes(b, mats[i]), dtype=b.dtype, device=b.device)
                      for i, b in enumerate(getattr(t, a))]
    return replace(t, **changes)


def merge_targets(network: TeacherTargets, lidar: TeacherTargets) -> TeacherTargets:
    """A live teacher's network targets completed with the network-free ones (masks, LiDAR depth)
    of ``lidar`` where ``network`` lacks them: every dense target (:data:`DENSE_ATTRS`) that
    ``network`` has as None and ``lidar`` has."""
    return replace(network, **{a: getattr(lidar, a) for a in DENSE_ATTRS
                               if getattr(network, a) is None and getattr(lidar, a) is not None})


def live_teacher_targets(teacher: torch.nn.Module, points: Sequence[torch.Tensor], lidar: PackedTargets,
                         device: torch.device | str) -> TeacherTargets:
    """Online distillation: run ``teacher`` on the (un-augmented, lidar-frame) points, add the
    network-free targets of ``lidar`` (built by the loader in the same frame) and align the
    result exactly as cached targets are aligned, so both paths differ only in their source.

    Args:
        teacher: ``forward(TeacherInput) -> TeacherOutput`` (e.g. CenterPoint), eval mode.
        points: per sample ``(N_i, >=5)`` float32 lidar frame.
        lidar: packed network-free targets and the residual transforms of the batch.
    """
    from teachers.input import TeacherInput  # the only teacher-side type needed here

    with torch.no_grad():
        out = teacher(TeacherInput(points=[p.to(device, non_blocking=True) for p in points]))
    network = TeacherTargets.from_teacher_output(out)
    merged = merge_targets(network, unpack_targets(lidar, device))
    return align_targets(merged, lidar.residual_bev, lidar.residual_img, lidar.depth_out_size, lidar.depth_stride)


def spec_from_schema(schema: Any) -> TeacherShapes:
    """The :class:`TeacherShapes` (grid, BEV channels, instance channels, classes) of a cache schema."""
    shapes = {t.name: t.shape for t in schema.targets}
    return TeacherShapes(bev_grid=schema.grid,
                       bev_channels={n.split("/", 1)[1]: int(s[0]) for n, s in shapes.items()
                                     if n.startswith("bev_features/")},
                       instance_channels=int(shapes["instance_features"][1]) if "instance_features" in shapes else None,
                       num_classes=int(shapes["heatmap"][0]) if "heatmap" in shapes else 10)


def spec_from_output(out: Any) -> TeacherShapes:
    """The :class:`TeacherShapes` of a live teacher's :class:`teachers.output.TeacherOutput`."""
    inst = next((int(f.shape[-1]) for f in out.instance_features), None)
    return TeacherShapes(bev_grid=out.bev_grid, bev_channels={k: int(v.shape[1]) for k, v in out.bev_features.items()},
                       instance_channels=inst, num_classes=int(out.heatmap.shape[1]))


def packed_to_teacher_targets(packed: PackedTargets, device: torch.device | str) -> TeacherTargets:
    """:func:`unpack_targets` then :func:`align_targets` with the packed residuals."""
    raw = unpack_targets(packed, device)
    return align_targets(raw, packed.residual_bev, packed.residual_img, packed.depth_out_size, packed.depth_stride)


__all__ = ["PackedTargets", "align_targets", "collate_targets", "live_teacher_targets", "merge_targets",
           "packed_to_teacher_targets", "row_fields", "spec_from_output", "spec_from_schema", "unpack_targets"]
