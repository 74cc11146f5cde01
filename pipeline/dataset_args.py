"""Command-line selection of a dataset reader (``--dataroot`` for nuScenes or ``--info`` for mmdet3d);
:func:`storage.readers.open_reader` opens it."""

from __future__ import annotations

import argparse

from storage.readers import open_reader
from storage.sample import SampleReader


def add_reader_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--dataroot/--version/--split`` (nuScenes) or ``--info [--data-root]`` (mmdet3d)
    and ``--sweeps`` to ``parser``."""
    g = parser.add_argument_group("dataset (give --dataroot for nuScenes or --info for mmdet3d)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--dataroot", metavar="DIR",
                     help="nuScenes dataroot holding <version>/*.json, samples/ and sweeps/ (real or `bevkd synth`)")
    src.add_argument("--info", metavar="FILE",
                     help="mmdetection3d info pickle (info_version 1.1 or v0.x) instead of a nuScenes dataroot")
    g.add_argument("--version", default="v1.0-mini", help="nuScenes table version folder (default: %(default)s)")
    g.add_argument("--split", default="mini_val",
                   help="nuScenes devkit split: mini_val, mini_train, train, val, ... (default: %(default)s)")
    g.add_argument("--data-root", metavar="DIR", default=None,
                   help="with --info: folder the info's relative file paths start from (default: the info's folder)")
    g.add_argument("--sweeps", type=int, default=0,
                   help="past LiDAR sweeps merged into each sample's points (default: %(default)s)")
    g.add_argument("--frames", choices=("keyframes", "sweeps", "all"), default="keyframes",
                   help="with --dataroot: annotated keyframes, unannotated non-keyframe camera sweeps (keyed by the "
                        "CAM_FRONT sample_data token, nearest LiDAR sweep), or all (default: %(default)s)")


def reader_from_args(args: argparse.Namespace) -> SampleReader:
    """The reader the parsed arguments select.

    Raises:
        ValueError: neither ``--dataroot`` nor ``--info`` was given, or the reader refused them.
    """
    if not (getattr(args, "dataroot", None) or getattr(args, "info", None)):
        return open_reader()  # raises the ValueError that names both flags
    return open_reader(dataroot=args.dataroot, info=args.info, version=args.version, split=args.split,
                       data_root=args.data_root, sweeps=args.sweeps, frames=getattr(args, "frames", "keyframes"))


__all__ = ["add_reader_arguments", "reader_from_args"]
