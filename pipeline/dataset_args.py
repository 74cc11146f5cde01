"""Command-line selection of a dataset reader (``--dataroot`` for nuScenes or ``--info`` for mmdet3d);
:func:`storage.readers.open_reader` opens it.

``--dataroot`` is the nuScenes dataroot (the devkit's name); ``--info-root`` is the folder an mmdet3d
info file's relative paths start from. The latter was once spelled ``--data-root``: that spelling
still works, hidden, and prints one deprecation line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from storage.readers import open_reader, read_scene_list
from storage.sample import SampleReader


class _DeprecatedAlias(argparse.Action):
    """Store like the option ``new`` names, after one line on stderr saying to use ``new``."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: {option_string} is deprecated, use {self.new} (same meaning)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def positive_int(text: str) -> int:
    """argparse ``type=`` of a size in pixels (``--image-hw H W`` and its aliases in every command):
    an int of at least 1, else argparse's one-line error naming the flag (exit code 2).

    Raises:
        argparse.ArgumentTypeError: not an integer, or below 1.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (pixels), got {value}")
    return value


def add_reader_arguments(parser: argparse.ArgumentParser, box_check: bool = False,
                         resolved_later: dict[str, str] | None = None) -> None:
    """Add ``--dataroot/--version/--split/--scenes`` (nuScenes) or ``--info [--info-root]`` (mmdet3d)
    and ``--sweeps``/``--frames`` to ``parser``.

    With ``box_check``, also ``--skip-box-check``: :func:`reader_from_args` then runs
    :func:`storage.box_convention.check_box_convention` on the reader and refuses a dataset whose
    boxes disagree with its LiDAR points (the cache command).

    ``resolved_later`` maps a flag's dest (``version``, ``split``, ``frames``) to its help text for a
    command that resolves the default itself (from a cache's recorded dataset): the flag's default
    is then None."""
    later = resolved_later or {}
    g = parser.add_argument_group("dataset (give --dataroot for nuScenes or --info for mmdet3d)")
    src = g.add_mutually_exclusive_group()
    src.add_argument("--dataroot", metavar="DIR",
                     help="nuScenes dataroot holding <version>/*.json, samples/ and sweeps/ (real or `bevkd synth`)")
    src.add_argument("--info", metavar="FILE",
                     help="mmdetection3d info pickle (info_version 1.1 or v0.x) instead of a nuScenes dataroot")
    g.add_argument("--version", default=None if "version" in later else "v1.0-mini",
                   help=later.get("version", "nuScenes table version folder (default: %(default)s)"))
    g.add_argument("--split", default=None if "split" in later else "mini_val",
                   help=later.get("split", "nuScenes devkit split: mini_val, mini_train, train, val, ..., or 'all' "
                                  "for every scene in the tables (a custom nuScenes-format dataset with its own scene "
                                  "names; default: %(default)s)"))
    g.add_argument("--scenes", metavar="FILE", default=None,
                   help="with --dataroot: read the scenes named in FILE (one name per line, '#' comments) instead of "
                        "--split")
    g.add_argument("--info-root", metavar="DIR", default=None, dest="info_root",
                   help="with --info: folder the info's relative file paths start from (default: the info's folder)")
    g.add_argument("--data-root", metavar="DIR", dest="info_root", action=_DeprecatedAlias, new="--info-root",
                   help=argparse.SUPPRESS)
    g.add_argument("--sweeps", type=int, default=0,
                   help="past LiDAR sweeps merged into each sample's points (default: %(default)s)")
    g.add_argument("--frames", choices=("keyframes", "sweeps", "all"),
                   default=None if "frames" in later else "keyframes",
                   help=later.get("frames", "with --dataroot: annotated keyframes, unannotated non-keyframe camera "
                                  "sweeps (keyed by the CAM_FRONT sample_data token, nearest LiDAR sweep), or all "
                                  "(default: %(default)s)"))
    if box_check:
        g.add_argument("--skip-box-check", action="store_true",
                       help="do not refuse a dataset whose GT boxes disagree with num_lidar_pts (the check counts "
                            "LiDAR points inside the boxes of a few samples and names the likely box convention)")
        parser.set_defaults(_box_check=True)


def reader_from_args(args: argparse.Namespace) -> SampleReader:
    """The reader the parsed arguments select.

    Raises:
        ValueError: neither ``--dataroot`` nor ``--info`` was given, or the reader refused them.
        FileNotFoundError: the ``--scenes`` file does not exist.
        BoxConventionError: (a ``ValueError``; parsers made with ``box_check`` only, unless
            ``--skip-box-check``) the GT boxes disagree with the LiDAR points; the one-line message
            names the likely convention.
    """
    if not (getattr(args, "dataroot", None) or getattr(args, "info", None)):
        return open_reader()  # raises the ValueError that names both flags
    scenes_file = getattr(args, "scenes", None)
    reader = open_reader(dataroot=args.dataroot, info=args.info, version=args.version, split=args.split,
                         data_root=getattr(args, "info_root", None) or getattr(args, "data_root", None),
                         sweeps=args.sweeps, frames=getattr(args, "frames", "keyframes"),
                         scenes=read_scene_list(scenes_file) if scenes_file else None)
    if getattr(args, "_box_check", False) and not getattr(args, "skip_box_check", False):
        from storage.box_convention import check_box_convention
        from storage.errors import BoxConventionError

        report = check_box_convention(reader)
        if not report.ok:
            raise BoxConventionError(f"{report.summary()}; pass --skip-box-check to use the boxes as read")
    return reader


__all__ = ["add_reader_arguments", "positive_int", "reader_from_args"]
