"""mmdet3d CenterPoint checkpoint conversion.

The "native" model here is a dense functional re-statement of mmdet3d's CenterPoint
(voxel0075 nuScenes widths) run directly on the mmdet3d-layout state dict (spconv 1.x kernels
``(kD, kH, kW, in, out)``): sparse convs are dense convs restricted to the active sites
(submanifold: output sites = input sites; regular: sites whose receptive field holds an active
input, Graham et al. CVPR 2018). It shares no code with our spconv model, so equal outputs show
the key mapping and kernel permutation are right.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from storage.grid import BEVGrid
from teachers.centerpoint import CenterPointTeacher
from teachers.config import centerpoint_voxel0075
from teachers.mmdet3d_convert import convert_mmdet3d_centerpoint, load_mmdet3d_centerpoint
from teachers.voxelize import voxelize

TASKS = ((0,), (1, 2), (3, 4), (5,), (6, 7), (8, 9))
BRANCHES = (("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2))


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def mmdet3d_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of mmdet3d's centerpoint_voxel0075 nuScenes model (MMCV spconv 1.x layout)."""
    s: dict[str, tuple[int, ...]] = {"pts_middle_encoder.conv_input.0.weight": (3, 3, 3, 5, 16)}
    s |= _bn("pts_middle_encoder.conv_input.1", 16)
    stages = ((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128))
    c_in = 16
    for i, chans in enumerate(stages):
        for j, c in enumerate(chans):
            p = f"pts_middle_encoder.encoder_layers.encoder_layer{i + 1}.{j}"
            if j == len(chans) - 1 and i != len(stages) - 1:
                s[f"{p}.0.weight"] = (3, 3, 3, c_in, c)
                s |= _bn(f"{p}.1", c)
            else:
                for k in (1, 2):
                    s[f"{p}.conv{k}.weight"] = (3, 3, 3, c, c)
                    s |= _bn(f"{p}.bn{k}", c)
            c_in = c
    s["pts_middle_encoder.conv_out.0.weight"] = (3, 1, 1, 128, 128)
    s |= _bn("pts_middle_encoder.conv_out.1", 128)
    for i, (ci, co) in enumerate(((256, 128), (128, 256))):
        for k in range(6):
            s[f"pts_backbone.blocks.{i}.{3 * k}.weight"] = (co, ci if k == 0 else co, 3, 3)
            s |= _bn(f"pts_backbone.blocks.{i}.{3 * k + 1}", co)
    s["pts_neck.deblocks.0.0.weight"] = (256, 128, 1, 1)
    s["pts_neck.deblocks.1.0.weight"] = (256, 256, 2, 2)  # ConvTranspose2d: (in, out, k, k)
    s |= _bn("pts_neck.deblocks.0.1", 256) | _bn("pts_neck.deblocks.1.1", 256)
    s["pts_bbox_head.shared_conv.conv.weight"] = (64, 512, 3, 3)
    s |= _bn("pts_bbox_head.shared_conv.bn", 64)
    for t, classes in enumerate(TASKS):
        for name, c in BRANCHES + (("heatmap", len(classes)),):
            p = f"pts_bbox_head.task_heads.{t}.{name}"
            s[f"{p}.0.conv.weight"] = (64, 64, 3, 3)
            s |= _bn(f"{p}.0.bn", 64)
            s[f"{p}.1.weight"] = (c, 64, 3, 3)
            s[f"{p}.1.bias"] = (c,)
    s["pts_voxel_encoder.dummy_buffer"] = (1,)  # stands for keys outside the detector (dropped)
    return s


def random_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in mmdet3d_shapes().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(100)
        elif k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(shape, generator=g)
        elif k.endswith("running_mean") or k.endswith(".bias"):
            sd[k] = 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1:  # BN weight
            sd[k] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[:-1]) if len(shape) == 5 else math.prod(shape[1:])
            if "deblocks.1.0" in k:
                fan_in = shape[0]
            sd[k] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
    return {"meta": {"mmdet3d_version": "1.x"}, "state_dict": sd}


# ---- the dense functional reference ---------------------------------------------------------
def _bnf(x: torch.Tensor, sd: dict, p: str, eps: float) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        False, 0.0, eps)


def _sparse(x, m, w1, stride=1, padding=1, subm=True):
    w = w1.permute(4, 3, 0, 1, 2)  # (kD,kH,kW,in,out) -> (out,in,kD,kH,kW)
    y = F.conv3d(x, w, stride=stride, padding=padding)
    if not subm:
        m = F.conv3d(m, torch.ones(1, 1, *w.shape[2:]), stride=stride, padding=padding) > 0
        m = m.float()
    return y * m, m


def reference_forward(sd: dict, feats, coords, sparse_shape, batch_size):
    d, h, w = sparse_shape
    x = torch.zeros(batch_size, feats.shape[1], d, h, w)
    m = torch.zeros(batch_size, 1, d, h, w)
    b, z, yy, xx = coords.long().unbind(1)
    x[b, :, z, yy, xx] = feats
    m[b, 0, z, yy, xx] = 1.0
    pe = "pts_middle_encoder"
    x, m = _sparse(x, m, sd[f"{pe}.conv_input.0.weight"])
    x = F.relu(_bnf(x, sd, f"{pe}.conv_input.1", 1e-3)) * m
    pads = {1: 1, 2: 1, 3: (0, 1, 1)}
    for i in range(1, 5):
        for j in range(3):
            p = f"{pe}.encoder_layers.encoder_layer{i}.{j}"
            if f"{p}.0.weight" in sd:
                x, m = _sparse(x, m, sd[f"{p}.0.weight"], stride=2, padding=pads[i], subm=False)
                x = F.relu(_bnf(x, sd, f"{p}.1", 1e-3)) * m
            elif f"{p}.conv1.weight" in sd:
                y, _ = _sparse(x, m, sd[f"{p}.conv1.weight"])
                y = F.relu(_bnf(y, sd, f"{p}.bn1", 1e-3)) * m
                y, _ = _sparse(y, m, sd[f"{p}.conv2.weight"])
                x = F.relu(_bnf(y, sd, f"{p}.bn2", 1e-3) * m + x) * m
    x, m = _sparse(x, m, sd[f"{pe}.conv_out.0.weight"], stride=(2, 1, 1), padding=0, subm=False)
    x = F.relu(_bnf(x, sd, f"{pe}.conv_out.1", 1e-3)) * m
    bb, c, dd, hh, ww = x.shape
    bev = x.reshape(bb, c * dd, hh, ww)
    feats2d, y = [], bev
    for i in range(2):
        for k in range(6):
            y = F.conv2d(y, sd[f"pts_backbone.blocks.{i}.{3 * k}.weight"], stride=2 if (i == 1 and k == 0) else 1,
                         padding=1)
            y = F.relu(_bnf(y, sd, f"pts_backbone.blocks.{i}.{3 * k + 1}", 1e-3))
        feats2d.append(y)
    up0 = F.conv2d(feats2d[0], sd["pts_neck.deblocks.0.0.weight"])
    up1 = F.conv_transpose2d(feats2d[1], sd["pts_neck.deblocks.1.0.weight"], stride=2)
    neck = torch.cat([F.relu(_bnf(up0, sd, "pts_neck.deblocks.0.1", 1e-3)),
                      F.relu(_bnf(up1, sd, "pts_neck.deblocks.1.1", 1e-3))], 1)
    hp = "pts_bbox_head"
    shared_conv = F.conv2d(neck, sd[f"{hp}.shared_conv.conv.weight"], padding=1)
    shared = F.relu(_bnf(shared_conv, sd, f"{hp}.shared_conv.bn", 1e-5))
    heads = []
    for t in range(len(TASKS)):
        out = {}
        for name, _ in BRANCHES + (("heatmap", 0),):
            p = f"{hp}.task_heads.{t}.{name}"
            y = F.relu(_bnf(F.conv2d(shared, sd[f"{p}.0.conv.weight"], padding=1), sd, f"{p}.0.bn", 1e-5))
            out[name] = F.conv2d(y, sd[f"{p}.1.weight"], sd[f"{p}.1.bias"], padding=1)
        heads.append(out)
    return bev, neck, heads


def test_converted_checkpoint_matches_native_model():
    torch.manual_seed(0)
    small = BEVGrid(point_cloud_range=(-2.4, -2.4, -5.0, 2.4, 2.4, 3.0), voxel_size=(0.075, 0.075, 0.2))
    cfg = dataclasses.replace(centerpoint_voxel0075(), grid=small)
    model = CenterPointTeacher(cfg).eval()
    ckpt = random_checkpoint()
    report = load_mmdet3d_centerpoint(model, ckpt)
    assert report.dropped == ["pts_voxel_encoder.dummy_buffer"]
    n_sparse = sum(1 for k, s in mmdet3d_shapes().items() if len(s) == 5)
    assert len(report.permuted) == n_sparse
    pts = torch.rand(3000, 5) * torch.tensor([4.8, 4.8, 8.0, 1, 1]) - torch.tensor([2.4, 2.4, 5.0, 0, 0])
    with torch.no_grad():
        ours = model.maps([pts])
        vc = cfg.voxelization
        vox = voxelize([pts], cfg.grid, vc.mode, vc.max_points_per_voxel, vc.max_voxels[1])
        bev, neck, heads = reference_forward(ckpt["state_dict"], vox.features, vox.coords, cfg.sparse_shape, 1)
    assert ours.lidar_bev.shape == bev.shape == (1, 256, 8, 8)
    assert float(bev.abs().max()) > 0
    torch.testing.assert_close(ours.lidar_bev, bev, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.neck, neck, rtol=1e-4, atol=1e-4)
    for o, r in zip(ours.head, heads, strict=True):
        for name in ("heatmap", "reg", "height", "dim", "rot", "vel"):
            torch.testing.assert_close(getattr(o, name), r[name], rtol=1e-4, atol=2e-4)


def test_full_nuscenes_model_loads_strictly_and_refuses_wrong_layouts():
    model = CenterPointTeacher(centerpoint_voxel0075())
    ckpt = random_checkpoint(1)
    load_mmdet3d_centerpoint(model, ckpt)
    w = ckpt["state_dict"]["pts_middle_encoder.conv_input.0.weight"]
    torch.testing.assert_close(model.pts_middle_encoder.conv_input[0].weight, w.permute(4, 0, 1, 2, 3))
    # already spconv-2 layout: left alone
    sd2, rep2 = convert_mmdet3d_centerpoint(model.state_dict(), model)
    assert rep2.permuted == []
    with pytest.raises((ValueError, RuntimeError)):
        load_mmdet3d_centerpoint(model, ckpt, layout="spconv2")
    bad = dict(ckpt["state_dict"])
    del bad["pts_bbox_head.task_heads.5.heatmap.1.bias"]
    with pytest.raises(ValueError, match="missing"):
        load_mmdet3d_centerpoint(model, bad)
