"""Round trips of every target type through real Zarr stores (local dir, MemoryStore, fsspec memory://)."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
import zarr

from storage.cache import (CacheReader, CacheSchema, CacheWriter, Codec, DatasetInfo, QuantizedArray, RowResult,
                           TeacherInfo, dequantize, target_specs_for)
from synthetic_targets import SyntheticTargetsConfig, synthetic_targets
from storage.grid import BEVGrid

GRID = BEVGrid(point_cloud_range=(-8, -8, -5, 8, 8, 3), voxel_size=(1, 1, 8))  # BEV 16x16
CFG = SyntheticTargetsConfig(bev_channels=(("lidar_bev", 8), ("neck", 4)))
DATASET = DatasetInfo(dataset_id="synthetic", version="v0", split="train")


def make_data(*, num_samples=10, views=1, seed=0, cfg=CFG):
    """Sample tokens and the synthetic targets of every row, by (token, view); same seed, same data."""
    rng = np.random.default_rng(seed)
    tokens = [f"{i:04d}" + uuid.UUID(int=i + 1).hex[4:] for i in range(num_samples)]
    return tokens, {(t, v): synthetic_targets(rng, cfg) for t in tokens for v in range(views)}


def make_cache(location, *, num_samples=10, shard_size=4, views=1, codecs=None, only=None, seed=0, cfg=CFG):
    """A cache schema, writer, and the targets of every row (by (token, view))."""
    tokens, data = make_data(num_samples=num_samples, views=views, seed=seed, cfg=cfg)
    specs = target_specs_for(next(iter(data.values())), max_boxes=7, codecs=codecs, only=only)
    schema = CacheSchema(grid=GRID, teacher=TeacherInfo(name="tiny", config={"a": 1}, weights_sha256="ab" * 32),
                         dataset=DATASET, targets=specs, num_rows=num_samples * views, views=views,
                         shard_size=shard_size)
    return schema, CacheWriter.create(location, schema, tokens), data


def write(writer, data, shards=None):
    for i in shards if shards is not None else range(writer.schema.num_shards):
        writer.write_shard(i, [RowResult(sample_token=t, view=v, scene="scene-1", timestamp_us=1000 + i,
                                         targets=data[t, v]) for t, v in writer.shard_rows(i)])


def cosine(a, b):
    return float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(params=["local", "memory", "fsspec"])
def location(request, tmp_path):
    if request.param == "local":
        return tmp_path / "cache"
    if request.param == "memory":
        return zarr.storage.MemoryStore()
    return f"memory://bevkd-test-{uuid.uuid4().hex}"


def test_every_target_round_trips(location):
    schema, writer, data = make_cache(location)
    write(writer, data, shards=[2, 0, 1])  # out of order; shard 2 is the short last one
    reader = CacheReader(location, expect_grid=GRID, expect_dataset=DATASET)
    assert len(reader) == 10 and list(reader.ok_rows) == list(range(10))
    for (token, view), want in data.items():
        got = reader.read(token, view)
        assert got.sample_token == token and got.row == writer.row_index(token, view)
        # lossless: boxes, scores, labels, masks
        m = len(want.boxes)
        np.testing.assert_array_equal(got.boxes, want.boxes)
        np.testing.assert_array_equal(got.scores, want.scores)
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_array_equal(got.fg_mask, want.fg_mask)
        np.testing.assert_array_equal(got.view_mask, want.view_mask)
        # float16: relative error <= 2^-11
        np.testing.assert_allclose(got.lidar_depth, want.lidar_depth, rtol=2 ** -11, atol=0)
        assert got.instance_features.shape == (m, CFG.instance_channels)
        np.testing.assert_allclose(got.instance_features, want.instance_features, rtol=2 ** -11, atol=1e-7)
        # unit uint8: |error| <= 1/510
        assert np.abs(got.heatmap - want.heatmap).max() <= 1 / 510 + 1e-6
        assert np.abs(got.depth_probs - want.depth_probs).max() <= 1 / 510 + 1e-6
        # per-channel sqrt-companded uint8: |error| <= (max - min) / 254, zeros exact, cosine high
        for stage, x in want.bev_features.items():
            y = got.bev_features[stage]
            bound = (x.max(axis=(1, 2)) - x.min(axis=(1, 2))) / 254
            err = np.abs(y - x).max(axis=(1, 2))
            assert np.all(err <= bound) and np.all(err > bound / 20)  # lossy, within bound
            np.testing.assert_array_equal(y[x == 0], 0)
            assert cosine(y, x) >= 0.999 and rel_l2(y, x) < 0.02
        np.testing.assert_array_equal(got.view_matrix, np.eye(4))


def test_decode_false_returns_uint8_and_scales_for_late_dequantisation(tmp_path):
    torch = pytest.importorskip("torch")
    _, writer, data = make_cache(tmp_path / "c", num_samples=4)
    write(writer, data)
    reader = CacheReader(tmp_path / "c")
    full, raw = reader.read(2), reader.read(2, decode=False)
    q = raw.bev_features["lidar_bev"]
    assert isinstance(q, QuantizedArray) and q.data.dtype == np.uint8 and q.scale.shape == (8,) and q.power == 2
    np.testing.assert_array_equal(dequantize(q), full.bev_features["lidar_bev"])
    assert isinstance(raw.heatmap, QuantizedArray) and raw.heatmap.data.dtype == np.uint8
    np.testing.assert_allclose(dequantize(raw.heatmap), full.heatmap, atol=1e-6)
    assert raw.lidar_depth.dtype == np.float16
    # the same one-liner on torch tensors (as the trainer does on the GPU)
    qt = QuantizedArray(*(torch.from_numpy(np.ascontiguousarray(a))[None] for a in q))
    np.testing.assert_allclose(dequantize(qt)[0].numpy(), full.bev_features["lidar_bev"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("codec", [Codec(kind="float16", zstd_level=1), Codec(kind="float16", zstd_level=None),
                                   Codec(kind="float32", zstd_level=3), Codec(kind="quant_u8", zstd_level=1)])
def test_bev_codec_options(tmp_path, codec):
    _, writer, data = make_cache(tmp_path / "c", num_samples=3, codecs={"bev_features": codec})
    write(writer, data)
    reader = CacheReader(tmp_path / "c")
    for (token, _view), want in data.items():
        got = reader.read(token).bev_features["lidar_bev"]
        x = want.bev_features["lidar_bev"]
        if codec.kind == "float32":
            np.testing.assert_array_equal(got, x)
        elif codec.kind == "quant_u8":  # affine: |error| <= scale, zeros exact
            scale = (x.max(axis=(1, 2)) - x.min(axis=(1, 2))) / 255
            assert np.all(np.abs(got - x).max(axis=(1, 2)) <= scale * 1.0001)
            np.testing.assert_array_equal(got[x == 0], 0)
        else:
            np.testing.assert_array_equal(got, x.astype(np.float16).astype(np.float32))
    assert str(reader.schema.target("bev_features/neck").codec) == str(codec)


def test_target_subset_and_views(tmp_path):
    schema, writer, data = make_cache(tmp_path / "c", num_samples=3, views=2, shard_size=4,
                                      only=("heatmap", "boxes"))
    assert [t.name for t in schema.targets] == ["heatmap", "boxes"]
    aug = np.eye(4)
    aug[:2, :2] = [[0, -1], [1, 0]]
    for i in range(schema.num_shards):
        writer.write_shard(i, [RowResult(sample_token=t, view=v, targets=data[t, v],
                                         view_matrix=aug if v else None) for t, v in writer.shard_rows(i)])
    reader = CacheReader(tmp_path / "c", targets=["boxes"])
    token = writer.sample_tokens[1]
    got = reader.read(token, view=1)
    assert got.row == 3 and got.view == 1 and got.heatmap is None
    np.testing.assert_array_equal(got.view_matrix, aug)
    np.testing.assert_array_equal(got.boxes, data[token, 1].boxes)
    np.testing.assert_array_equal(reader.read(token, view=0).view_matrix, np.eye(4))
    with pytest.raises(KeyError, match="not in this cache"):
        CacheReader(tmp_path / "c", targets=["lidar_depth"])


def test_instance_features_alone_come_with_their_boxes(tmp_path):
    _, writer, data = make_cache(tmp_path / "c", num_samples=2, only=("boxes", "instance_features"))
    write(writer, data)
    got = CacheReader(tmp_path / "c", targets=["instance_features"]).read(writer.sample_tokens[1])
    want = data[writer.sample_tokens[1], 0]
    assert got.instance_features.shape == want.instance_features.shape and len(got.boxes) == len(want.boxes)


def test_read_into_fills_caller_buffers(tmp_path):
    _, writer, data = make_cache(tmp_path / "c", num_samples=3)
    write(writer, data)
    reader = CacheReader(tmp_path / "c")
    shape, dtype = reader.stored_layout("bev_features/lidar_bev")
    batch = np.zeros((2, *shape), dtype)
    depth = np.zeros((2, *reader.stored_layout("lidar_depth")[0]), np.float16)
    for j, row in enumerate((2, 0)):
        got = reader.read(row, decode=False, into={"bev_features/lidar_bev": batch[j], "lidar_depth": depth[j]})
        assert np.shares_memory(got.bev_features["lidar_bev"].data, batch[j])
        np.testing.assert_array_equal(dequantize(got.bev_features["lidar_bev"]),
                                      reader.read(row).bev_features["lidar_bev"])
    np.testing.assert_array_equal(depth[1].astype(np.float32), reader.read(0).lidar_depth)
    with pytest.raises(ValueError, match="writable C-contiguous"):
        reader.read(0, into={"lidar_depth": np.zeros((6, 4, 8), np.float32)})
