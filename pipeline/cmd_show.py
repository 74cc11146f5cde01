"""``bevkd show CACHE [--sample TOKEN]``: a PNG of what the teacher stored for a sample, or with
``--rrd out.rrd`` a Rerun recording of the sample's scene (:mod:`pipeline.rerun_view`)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from pipeline.dataset_args import add_reader_arguments, reader_from_args
from pipeline.show import DEFAULT_SCORE_THRESHOLD

if TYPE_CHECKING:
    from storage.cache import CacheReader, DatasetInfo
    from storage.sample import SampleReader


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache", metavar="CACHE", help="cache location: local directory or fsspec URL")
    parser.add_argument("--sample", metavar="TOKEN", default=None,
                        help="sample_token to draw (default: the first committed row)")
    parser.add_argument("--view", type=int, default=0, help="view index for caches with --views K (default: 0)")
    parser.add_argument("--out", metavar="PNG", default=None,
                        help="output image file, not a folder; .png is added when it has no suffix "
                             "(default: show-<token>.png)")
    parser.add_argument("--stage", metavar="NAME", default=None,
                        help="cached BEV map the PNG draws, e.g. lidar_bev, camera_bev, fused_bev "
                             "(default: the first stored stage)")
    parser.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                        help="teacher boxes with a lower score are not drawn or logged (default: %(default)s)")
    parser.add_argument("--rrd", metavar="FILE", default=None,
                        help="write a Rerun recording instead of the PNG: the sample's whole scene on a timeline "
                             "(one step per sample, by timestamp; with the dataset) or the one sample (without); "
                             "open it with `rerun FILE`. Needs `pip install bevkd[viz]`")
    add_reader_arguments(parser, resolved_later={  # the cache's own dataset by default: run() (_default_dataset)
        "version": "nuScenes table version folder (default: the cache's recorded version, else v1.0-mini)",
        "split": ("nuScenes devkit split, or 'all' for every scene in the tables (default: the split the cache was "
                  "built on, else mini_val)"),
        "frames": ("with --dataroot: keyframes, sweeps (unannotated camera sweeps) or all (default: the cache's "
                   "recorded frames, else keyframes)")})
    parser.epilog = ("Give the dataset the cache was made from (--dataroot/--info) to also draw GT boxes, "
                     "LiDAR points and the camera images under the depth targets; with --dataroot, the cache's "
                     "recorded version, split and frames are the defaults.")


def _fail(message: str) -> int:
    print(f"bevkd show: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from storage.cache import CacheReader
    from storage.errors import CacheRowError

    if args.out is not None and not args.rrd:  # before any reading: refuse a folder or an unknown format
        from pipeline.show import image_path

        try:
            image_path(args.out)
        except (IsADirectoryError, ValueError) as exc:
            return _fail(str(exc))
    cache = CacheReader(args.cache)
    token = args.sample
    if token is None:
        if not len(cache):
            print(f"bevkd show: cache {args.cache} has no committed rows")
            return 1
        token = cache.read(int(cache.ok_rows[0]), decode=False).sample_token
    if token not in cache.sample_tokens:
        return _fail(f"sample {token} is not in cache {cache.location} ({len(cache.sample_tokens)} samples)")
    if args.stage is not None and f"bev_features/{args.stage}" not in cache.target_names:
        stages = [n.split("/", 1)[1] for n in cache.target_names if n.startswith("bev_features/")]
        return _fail(f"cache {cache.location}: no BEV stage {args.stage!r} (stored: {', '.join(stages) or 'none'})")
    _default_dataset(args, cache.schema.dataset)
    dataset = reader_from_args(args) if (args.dataroot or args.info) else None
    if dataset is not None and token not in dataset.sample_tokens:
        built = cache.schema.dataset
        return _fail(f"sample {token} of cache {cache.location} is not in dataset {dataset.dataset_id} (the cache "
                     f"was built on {built.dataset_id}:{built.version}:{built.split}; pass its --split or --scenes)")
    try:
        cache.read(token, view=args.view, decode=False)
    except (KeyError, CacheRowError) as exc:  # view out of range, row not committed or failed
        return _fail(str(exc).strip("'\""))
    if args.rrd:
        return _record(args, cache, token, dataset)
    from pipeline.show import render_sample

    sample = dataset.read(token) if dataset is not None else None
    out = args.out or f"show-{token}.png"
    res = render_sample(cache, token, out, view=args.view, sample=sample, stage=args.stage,
                        score_threshold=args.score_threshold)
    print(f"wrote {res.path}  (stage {res.bev_stage}, GT boxes {res.gt_boxes_drawn}, "
          f"teacher boxes {res.teacher_boxes_drawn} with score >= {args.score_threshold})")
    return 0


def _default_dataset(args: argparse.Namespace, recorded: DatasetInfo) -> None:
    """Fill ``--version/--split/--frames`` the user left out from the cache's recorded nuScenes
    dataset (``nuscenes:<version>:<split>[:<frames>]``), else v1.0-mini / mini_val / keyframes. A
    recorded scene list (``scenes-<n>-<hash>``) is no devkit split: mini_val then."""
    from storage.nuscenes_reader import FRAMES

    nuscenes = recorded.dataset_id == "nuscenes"
    split, _, frames = recorded.split.partition(":") if nuscenes else ("", "", "")
    if args.version is None:
        args.version = recorded.version if nuscenes and recorded.version else "v1.0-mini"
    if args.split is None:
        args.split = split if split and not split.startswith("scenes-") else "mini_val"
    if args.frames is None:
        args.frames = frames if frames in FRAMES else "keyframes"


def _record(args: argparse.Namespace, cache: CacheReader, token: str, dataset: SampleReader | None) -> int:
    from pipeline.rerun_view import ViewerMissingError, import_rerun, record_scene, scene_samples

    try:
        import_rerun()
    except ViewerMissingError as exc:
        return _fail(str(exc))
    if dataset is not None:
        ok = _ok_tokens(cache, args.view) | {token}  # the asked-for row fails loudly if it is not readable
        samples = scene_samples(dataset, token, keep=ok.__contains__)
        res = record_scene(cache, [s.sample_token for s in samples], args.rrd, view=args.view,
                           score_threshold=args.score_threshold, samples={s.sample_token: s for s in samples})
        where = f"scene {samples[0].scene}"
    else:
        res = record_scene(cache, [token], args.rrd, view=args.view, score_threshold=args.score_threshold)
        where = "one sample (give --dataroot/--info for its scene, points, GT and cameras)"
    print(f"wrote {res.path}  ({where}: {len(res.sample_tokens)} frames, teacher boxes per frame "
          f"{list(res.teacher_boxes)} with score >= {args.score_threshold}, GT boxes {list(res.gt_boxes)})")
    return 0


def _ok_tokens(cache: CacheReader, view: int) -> set[str]:
    """Sample tokens whose row of ``view`` is committed with status ok."""
    from storage.cache import manifest

    cols = {c: cache.rows.column(c).to_pylist() for c in ("sample_token", "view", "status")}
    return {tok for tok, v, st in zip(cols["sample_token"], cols["view"], cols["status"], strict=True)
            if v == view and st == manifest.STATUS_OK}
