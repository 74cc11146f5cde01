"""``bevkd show CACHE --sample TOKEN``: one figure of what the teacher stored for a sample."""

from __future__ import annotations

import argparse

from pipeline.dataset_args import add_reader_arguments, reader_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("cache", metavar="CACHE", help="cache location: local directory or fsspec URL")
    parser.add_argument("--sample", metavar="TOKEN", default=None,
                        help="sample_token to draw (default: the first committed row)")
    parser.add_argument("--view", type=int, default=0, help="view index for caches with --views K (default: 0)")
    parser.add_argument("--out", metavar="PNG", default=None, help="output file (default: show-<token>.png)")
    add_reader_arguments(parser)
    parser.epilog = ("Give the dataset the cache was made from (--dataroot/--info) to also draw GT boxes, "
                     "LiDAR points and the camera images under the depth targets.")


def run(args: argparse.Namespace) -> int:
    from pipeline.show import render_sample
    from storage.cache import CacheReader

    cache = CacheReader(args.cache)
    token = args.sample
    if token is None:
        if not len(cache):
            print(f"bevkd show: cache {args.cache} has no committed rows")
            return 1
        token = cache.read(int(cache.ok_rows[0]), decode=False).sample_token
    sample = None
    if args.dataroot or args.info:
        sample = reader_from_args(args).read(token)
    out = args.out or f"show-{token}.png"
    res = render_sample(cache, token, out, view=args.view, sample=sample)
    print(f"wrote {res.path}  (stage {res.bev_stage}, GT boxes {res.gt_boxes_drawn}, "
          f"teacher boxes {res.teacher_boxes_drawn})")
    return 0
