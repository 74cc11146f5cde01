"""Fault cases of the CLI kept as regression tests: ``synth`` and ``cache --overwrite`` never delete
what they did not write, Ctrl-C is one line and exit 130 (and a rerun resumes), a subcommand's bad
flag shows that subcommand's usage, and torch threads are ``--torch-threads`` everywhere.

Real components: generated nuScenes-format dataroots, a real cache written by the cache job, the
real CLI in-process, and a real ``bevkd cache`` subprocess interrupted with a real SIGINT.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zarr

from cli_checks import file_hashes, one_line
from pipeline.cli import EXIT_INTERRUPTED, main
from storage.cache import CacheWriter, stores
from storage.cache.overwrite import foreign_entries, is_own_entry
from storage.errors import NotACacheError
from storage.synth import PARTIAL_FILE, SUMMARY_FILE, SynthConfig, SynthSummary, generate_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


# ---- 1. bevkd synth never replaces a folder by accident ------------------------------------------------

@pytest.fixture()
def old_dataset(tmp_path) -> Path:
    """A generated dataroot with 2 keyframes (2 LiDAR files, 12 images): what --overwrite replaces."""
    config = SynthConfig(num_scenes=1, samples_per_scene=2, seed=3, image_size=(32, 18), azimuth_steps=64)
    return generate_dataset(config, tmp_path / "old")


def _synth(out: Path, *extra: str) -> list[str]:
    return ["synth", "--out", str(out), "--scenes", "1", "--samples-per-scene", "1", "--tables-only", *extra]


def test_synth_refuses_a_non_empty_out_and_a_file(old_dataset, tmp_path, capsys):
    before = file_hashes(old_dataset)
    assert main(_synth(old_dataset)) == 2
    err = one_line(capsys.readouterr().err, "synth")
    assert str(old_dataset) in err and "not empty" in err and "--overwrite" in err
    assert file_hashes(old_dataset) == before
    a_file = tmp_path / "afile"
    a_file.write_text("mine\n")
    for out in (a_file, a_file / "sub"):
        assert main(_synth(out)) == 2
        err = one_line(capsys.readouterr().err, "synth")
        assert "afile is a file" in err
    assert a_file.read_text() == "mine\n"
    (tmp_path / "empty").mkdir()  # an empty folder is fine without --overwrite
    assert main(_synth(tmp_path / "empty")) == 0
    assert SynthSummary.load(tmp_path / "empty").num_samples == 1 and not (tmp_path / "empty" / PARTIAL_FILE).exists()


def test_synth_overwrite_replaces_a_generated_dataroot_cleanly(old_dataset, capsys):
    assert len(list((old_dataset / "samples" / "LIDAR_TOP").iterdir())) == 2
    assert main(_synth(old_dataset, "--overwrite")) == 0
    # tables only: no sensor file at all, so none of the old ones may remain (no orphans)
    assert not (old_dataset / "samples").exists()
    assert sorted(p.name for p in old_dataset.iterdir()) == ["maps", SUMMARY_FILE, "v1.0-mini"]
    assert SynthSummary.load(old_dataset).num_samples == 1


def test_synth_overwrite_refuses_other_folders_and_foreign_files(old_dataset, tmp_path, capsys):
    # a real nuScenes dataroot (no synth summary) is never deleted
    real = tmp_path / "nuscenes"
    for sub in ("v1.0-mini", "samples/LIDAR_TOP", "maps"):
        (real / sub).mkdir(parents=True)
    (real / "LICENSE").write_text("nuScenes terms of use\n")
    (real / "samples" / "LIDAR_TOP" / "a.pcd.bin").write_bytes(b"\0" * 20)
    # a generated dataroot the user added a file to
    (old_dataset / "NOTES.txt").write_text("my notes\n")
    for folder, says in ((real, "not a dataroot bevkd synth wrote"), (old_dataset, "'NOTES.txt'")):
        before = file_hashes(folder)
        assert main(_synth(folder, "--overwrite")) == 2
        err = one_line(capsys.readouterr().err, "synth")
        assert says in err and "nothing was deleted" in err, err
        assert file_hashes(folder) == before


def test_synth_overwrite_replaces_an_interrupted_dataroot(old_dataset, capsys):
    """generate_dataset marks a dataroot while writing it, so one interrupted before its summary
    (Ctrl-C) is still recognised as generated."""
    (old_dataset / SUMMARY_FILE).unlink()
    (old_dataset / PARTIAL_FILE).write_text("{}")
    assert main(_synth(old_dataset, "--overwrite")) == 0
    assert not (old_dataset / "samples").exists() and not (old_dataset / PARTIAL_FILE).exists()


# ---- 2. cache --overwrite deletes only a cache and nothing else -----------------------------------------

def _with_foreign_files(cache: Path, dest: Path) -> Path:
    shutil.copytree(cache, dest)
    (dest / "NOTES.txt").write_text("my notes\n")
    (dest / "checkpoints").mkdir()
    (dest / "checkpoints" / "last.pt").write_bytes(b"weights")
    (dest / "train_log.jsonl").write_text('{"step": 1}\n')
    return dest


def test_cache_overwrite_refuses_a_cache_holding_foreign_files(student_cache, synth_dataroot, tmp_path, capsys):
    cache = _with_foreign_files(student_cache, tmp_path / "cache")
    assert foreign_entries(stores.open_store(cache)) == ["NOTES.txt", "checkpoints", "train_log.jsonl"]
    before = file_hashes(cache)
    rc = main(["cache", "--dataroot", str(synth_dataroot), "--split", "mini_val", "--no-ray", "--teacher",
               "centerpoint", "--out", str(cache), "--overwrite", "--no-progress"])
    err = one_line(capsys.readouterr().err, "cache")
    assert rc == 2 and str(cache) in err and "nothing was deleted" in err
    assert "'NOTES.txt', 'checkpoints', 'train_log.jsonl'" in err
    assert file_hashes(cache) == before
    # the writer itself (every path that deletes) refuses too, and so does completing a half-created cache
    writer = CacheWriter.open(cache)
    with pytest.raises(NotACacheError, match="NOTES.txt"):
        CacheWriter.create(cache, writer.schema, writer.sample_tokens, overwrite=True)
    half = _with_foreign_files(student_cache, tmp_path / "half")
    shutil.rmtree(half / "manifest")
    (half / "manifest.parquet").unlink(missing_ok=True)
    (half / "index" / "samples.parquet").unlink()  # created, interrupted before the sample index
    before = file_hashes(half)
    with pytest.raises(NotACacheError, match="checkpoints"):
        CacheWriter.create(half, writer.schema, writer.sample_tokens)
    assert file_hashes(half) == before


def test_cache_overwrite_still_refuses_a_non_cache_and_replaces_a_pure_cache(student_cache, synth_dataroot,
                                                                           tmp_path, capsys):
    theirs = tmp_path / "theirs.zarr"
    zarr.open_group(str(theirs), mode="w", zarr_format=3).attrs["owner"] = "someone else"
    before = file_hashes(theirs)
    rc = main(["cache", "--dataroot", str(synth_dataroot), "--split", "mini_val", "--no-ray", "--teacher",
               "centerpoint", "--out", str(theirs), "--overwrite", "--no-progress"])
    err = one_line(capsys.readouterr().err, "cache")
    assert rc == 2 and "not a bevkd cache" in err and file_hashes(theirs) == before
    cache = tmp_path / "pure"
    shutil.copytree(student_cache, cache)
    (cache / "zarr.0123456789abcdef0123456789abcdef.partial").write_bytes(b"{")  # a killed atomic write's leftover
    assert foreign_entries(stores.open_store(cache)) == [] and not is_own_entry("zarr.json.bak")
    writer = CacheWriter.open(cache)
    again = CacheWriter.create(cache, writer.schema, writer.sample_tokens, overwrite=True)
    assert again.committed_shards() == []
    assert sorted(p.name for p in cache.iterdir()) == ["index", "targets", "zarr.json"]


# ---- 3. Ctrl-C: one line, exit 130, and a rerun resumes -------------------------------------------------

def test_ctrl_c_of_bevkd_cache_is_one_line_and_a_rerun_resumes(synth_dataroot, tmp_path, capsys):
    out = tmp_path / "cache"
    args = ["cache", "--dataroot", str(synth_dataroot), "--split", "mini_val", "--no-ray", "--teacher", "centerpoint",
            "--out", str(out), "--shard-size", "1", "--batch-size", "1", "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "BEVKD_DEBUG"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p))
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "zarr.json").exists():  # the job has started: the cache is being created
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "bevkd cache did not start within 120 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "interrupted" in one_line(err, "cache") and "rerun the same command" in err
    capsys.readouterr()
    assert main(args) == 0  # resumes (or completes the creation) to a whole cache
    assert "6 rows ok, 0 failed" in capsys.readouterr().out
    assert main(["verify", str(out), "--no-progress"]) == 0  # 0: complete and intact


# ---- 4. a subcommand's bad flag shows that subcommand's usage -------------------------------------------

@pytest.mark.parametrize("command, required", [("train", []), ("cache", ["--out", "k"]), ("train-teacher", [])])
def test_unknown_flag_shows_the_subcommands_usage(command, required, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, *required, "--bogus", "1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith(f"usage: bevkd {command} ") and "COMMAND" not in err, err
    assert err.rstrip().endswith(f"bevkd {command}: error: unrecognized arguments: --bogus 1"), err
    with pytest.raises(SystemExit):  # a bad flag of no subcommand still gets the top-level usage
        main(["--bogus"])
    assert capsys.readouterr().err.startswith("usage: bevkd [-h] COMMAND")


# ---- 5. --torch-threads in train-teacher too (--threads: deprecated alias) -------------------------------

def test_train_teacher_torch_threads_and_its_deprecated_alias(synth_dataroot, tmp_path, capsys):
    import torch

    from pipeline import cmd_train_teacher

    parser = argparse.ArgumentParser(prog="bevkd train-teacher")
    cmd_train_teacher.add_arguments(parser)
    assert "--torch-threads" in parser.format_help() and "--threads " not in parser.format_help()
    assert parser.parse_args(["--torch-threads", "3"]).torch_threads == 3
    assert capsys.readouterr().err == ""
    # the old name still works, end to end (evaluation only), with one deprecation line
    torch.set_num_threads(2)
    try:
        assert main(["train-teacher", "--dataroot", str(synth_dataroot), "--epochs", "0", "--threads", "1",
                     "--work-dir", str(tmp_path)]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)
    err = capsys.readouterr().err
    assert "bevkd train-teacher: --threads is deprecated, use --torch-threads" in err
