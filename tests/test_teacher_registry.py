"""Teacher registry: names, checkpoints with config and sha256, bring-your-own factories."""

from __future__ import annotations

import textwrap

import pytest
import torch

from teachers.input import TeacherInput
from teachers.output import TeacherOutput
from teachers.registry import build_teacher, load_teacher, save_checkpoint, weights_sha256


def _points(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.rand(4000, 3, generator=g) * torch.tensor([60.0, 60.0, 4.0]) - torch.tensor([30.0, 30.0, 3.0])
    return [torch.cat([xyz, torch.rand(4000, 2, generator=g)], 1)]


def test_checkpoint_round_trip_rebuilds_config_and_weights(tmp_path):
    torch.manual_seed(1)
    model = build_teacher("centerpoint").eval()
    with torch.no_grad():  # make BN statistics non-trivial so a lost buffer would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
    path = tmp_path / "cp.pt"
    sha = save_checkpoint(model, "centerpoint", path, meta={"steps": 3})
    loaded, info = load_teacher(None, checkpoint=path)
    assert info.name == "centerpoint" and info.weights_sha256 == sha and info.meta == {"steps": 3}
    assert info.config["grid"]["voxel_size"] == list(model.config.grid.voxel_size)
    assert not loaded.training
    batch = TeacherInput(points=_points())
    with torch.no_grad():
        a, b = model(batch), loaded(batch)
    torch.testing.assert_close(a.heatmap, b.heatmap)
    fresh, fresh_info = load_teacher("centerpoint")
    assert fresh_info.weights_sha256 != sha and weights_sha256(fresh) == fresh_info.weights_sha256


def test_unknown_and_mismatched_teachers_are_refused(tmp_path):
    with pytest.raises(ValueError, match="registered name"):
        load_teacher("no_such_teacher")
    with pytest.raises(ValueError, match="cannot import"):
        load_teacher("no_such_pkg.mod:make")
    path = tmp_path / "sd.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit"):
        load_teacher("centerpoint", checkpoint=path)


def test_bring_your_own_factory(tmp_path, monkeypatch):
    (tmp_path / "my_teacher.py").write_text(textwrap.dedent('''
        import torch
        from storage.grid import DEMO_GRID
        from teachers.output import TeacherOutput

        class Occupancy(torch.nn.Module):
            """BEV point count as a one-channel 'teacher'."""
            def __init__(self):
                super().__init__()
                self.scale = torch.nn.Parameter(torch.ones(1))
                self.grid = DEMO_GRID.with_stride(8)
            def forward(self, batch):
                h, w = self.grid.bev_shape
                maps = []
                for p in batch.points:
                    rc = torch.from_numpy(self.grid.metric_to_cell(p[:, :2].numpy()))
                    ok = (rc[:, 0] >= 0) & (rc[:, 0] < h) & (rc[:, 1] >= 0) & (rc[:, 1] < w)
                    m = torch.zeros(h * w).index_add_(0, rc[ok, 0] * w + rc[ok, 1], torch.ones(int(ok.sum())))
                    maps.append(m.view(1, h, w))
                bev = torch.stack(maps) * self.scale
                return TeacherOutput(bev_grid=self.grid, bev_features={"lidar_bev": bev},
                                     heatmap=torch.zeros(len(maps), 10, h, w))

        def make():
            return Occupancy()
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    module, info = load_teacher("my_teacher:make")
    assert info.name == "my_teacher:make" and info.config == {}
    with torch.no_grad():
        out = module(TeacherInput(points=_points()))
    assert isinstance(out, TeacherOutput)
    assert float(out.bev_features["lidar_bev"].sum()) == pytest.approx(4000.0)  # every point in range counted once
