"""The ``bevkd`` console script: one command, many subcommands.

Each subcommand lives in its own module ``pipeline.cmd_<name>`` exposing
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when their
subcommand runs, so ``bevkd --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

# name -> (module, one-line help). Order is the order of `bevkd --help`.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("pipeline.cmd_demo", "run the end-to-end job on generated data and write a report"),
    "synth": ("pipeline.cmd_synth", "generate a nuScenes-format dataset (devkit-loadable)"),
    "info": ("pipeline.cmd_info", "summarise a dataset (nuScenes dataroot or mmdet3d info file)"),
    "train-teacher": ("pipeline.cmd_train_teacher", "train a reference teacher and evaluate it with the devkit"),
    "cache": ("pipeline.cmd_cache", "run a teacher once over a dataset into a target cache (Ray)"),
    "inspect": ("pipeline.cmd_inspect", "summarise a target cache: teacher, grid, rows, bytes per target"),
    "verify": ("pipeline.cmd_verify", "re-read every committed row of a cache and check its checksums"),
    "compact": ("pipeline.cmd_compact", "merge a cache's manifest fragments into one file (faster opening)"),
    "train": ("pipeline.cmd_train", "train a camera-only student from a cache"),
    "show": ("pipeline.cmd_show", "render what the teacher stored for one sample"),
    "eval": ("pipeline.cmd_eval", "evaluate a student run or the teacher boxes of a cache with the devkit"),
    "compare": ("pipeline.cmd_compare", "put several students (and the teacher) into one table and plot"),
    "ablate": ("pipeline.ablation", "choose a distillation recipe on validation scenes carved from the training split"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {k: v for k, v in SUBCOMMANDS.items() if importlib.util.find_spec(v[0]) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bevkd",
        description="Cache a LiDAR teacher's distillation targets once (offline, on Ray) and train "
                    "camera-only BEV students from the cache.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in _available().items():
        mod = importlib.import_module(module) if name == _requested() else None
        epilog = getattr(mod, "EPILOG", None)
        p = sub.add_parser(name, help=help_, description=help_, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(_module=module)
        if mod is not None:
            mod.add_arguments(p)
    return parser


_REQUESTED: list[str | None] = [None]


def _requested() -> str | None:
    return _REQUESTED[0]


def _quiet_third_party() -> None:
    """Silence deprecation chatter of pinned dependencies (spconv 2.3.6 on torch 2.13) that a
    user can do nothing about; our own warnings still show."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"spconv\.")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"spconv\.")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(ray|spconv|cumm)\.")
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    _quiet_third_party()
    argv = list(sys.argv[1:] if argv is None else argv)
    _REQUESTED[0] = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if not getattr(args, "command", None):
        if extras:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        parser.print_help()
        return 2
    if extras:  # the subcommand's usage, not the top level's (argparse leaves them to the top level)
        _subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(extras)}")
    module = importlib.import_module(args._module)
    from storage.errors import CacheCorruptError, CacheMismatchError, CheckpointError, SampleError, UnsafePickleError
    from storage.errors import CacheIncompleteError, CacheMetadataError, CacheWriteError
    from storage.errors import BoxConventionError, DatasetTableError

    user_errors = (FileNotFoundError, NotADirectoryError, CacheMismatchError, CacheCorruptError, SampleError,
                   UnsafePickleError, CheckpointError, CacheMetadataError, CacheIncompleteError, CacheWriteError,
                   DatasetTableError, BoxConventionError)
    try:
        return int(module.run(args) or 0)
    except user_errors as exc:  # bad input, not a bug: one line, no traceback (BEVKD_DEBUG=1 shows it)
        if os.environ.get("BEVKD_DEBUG"):
            raise
        print(f"bevkd {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C / SIGINT: one line, the shell's 128 + SIGINT
        if os.environ.get("BEVKD_DEBUG"):
            raise
        print(f"bevkd {args.command}: interrupted; {INTERRUPTED_HINTS.get(args.command, DEFAULT_HINT)}",
              file=sys.stderr)
        _quiet_interrupted_tasks()
        return EXIT_INTERRUPTED


#: Exit code after Ctrl-C (SIGINT), as a shell reports a process killed by it.
EXIT_INTERRUPTED = 130
#: What to do after an interrupted subcommand (the part after "interrupted; ").
INTERRUPTED_HINTS: dict[str, str] = {
    "cache": "committed shards are kept: rerun the same command to resume",
    "train": "rerun the same command with --resume to continue from the last checkpoint",
    "synth": "the dataroot is incomplete: rerun with --overwrite to write it afresh",
    "demo": "rerun the same command to resume",
}
DEFAULT_HINT = "nothing was finished; rerun the same command"


def _quiet_interrupted_tasks() -> None:
    """Keep the one interrupted line the only one: a store operation Ctrl-C cut off mid-await stays
    pending on Zarr's event-loop thread, which Zarr closes at exit, and asyncio would report it
    ("Task was destroyed but it is pending!", "coroutine ... was never awaited"). Nothing is lost
    by it: every put is atomic and a shard counts only once its manifest fragment exists, so a
    rerun resumes (or completes a half-created cache)."""
    import logging
    import warnings

    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    logging.getLogger("zarr.core.sync").setLevel(logging.ERROR)  # "Thread did not finish cleanly" at exit
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The parser of subcommand ``command`` (registered by :func:`build_parser`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            sub: argparse.ArgumentParser = action.choices[command]
            return sub
    raise KeyError(command)


if __name__ == "__main__":
    sys.exit(main())
