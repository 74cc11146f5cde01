"""Fault cases of issue 12 kept as regression tests: nothing from a file runs, nothing that is not a
cache is deleted, a trained run is never replaced by accident.

Real components: the tiny generated nuScenes dataroot, real ``torch.save`` files (some crafted the
way an attacker would), real folders of user files, and the real CLI called in-process. Each
refusal must be one line on stderr with exit code 2 and leave every file as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import zarr

from cli_checks import file_hashes, one_line
from pipeline.cli import main
from storage.cache import CacheWriter, stores
from storage.cache.layout import check_replaceable, is_cache
from storage.errors import CheckpointError, NotACacheError
from student.trainer import load_student
from teachers.registry import load_teacher, save_checkpoint

#: Where a factory named by a test checkpoint leaves its mark if it is ever imported and called.
MARKER_ENV = "BEVKD_TEST_FAULTS_MARKER"


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


def _train_args(dataroot: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--dataroot", str(dataroot), "--split", "mini_val", "--out", str(out), "--student", "tiny",
            "--batch-size", "2", "--loader-workers", "0", "--device", "cpu", "--no-eval", *extra]


@pytest.fixture(scope="module")
def trained_run(synth_dataroot, tmp_path_factory) -> Path:
    """A run directory after `bevkd train --steps 2` (no teacher): checkpoint and a 2-line log."""
    out = tmp_path_factory.mktemp("faults") / "run"
    assert main(_train_args(synth_dataroot, out, "--steps", "2")) == 0
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2
    return out


class _RunsCode:
    """Pickles as a call to ``os.mkdir(marker)``: loading it without weights_only creates the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _crafted_checkpoint(trained: Path, path: Path, marker: Path) -> None:
    """A real student checkpoint with one extra entry whose unpickling would run code."""
    state = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "note": _RunsCode(marker)}, path)


# ---- 1. checkpoints are loaded weights-only -------------------------------------------------------------

def test_resume_refuses_a_checkpoint_that_would_run_code(synth_dataroot, trained_run, tmp_path, capsys):
    run, marker = tmp_path / "run", tmp_path / "marker"
    shutil.copytree(trained_run, run)
    _crafted_checkpoint(trained_run, run / "checkpoints" / "last.pt", marker)
    before = file_hashes(run)
    capsys.readouterr()
    rc = main(_train_args(synth_dataroot, run, "--steps", "3", "--resume"))
    err = one_line(capsys.readouterr().err, "train")
    assert rc == 2 and "last.pt" in err and "mkdir" in err and "weights_only=True" in err
    assert not marker.exists()  # nothing from the file ran
    assert file_hashes(run) == before


def test_load_student_refuses_code_and_loads_a_real_checkpoint(trained_run, tmp_path):
    marker, evil = tmp_path / "marker", tmp_path / "evil.pt"
    _crafted_checkpoint(trained_run, evil, marker)
    with pytest.raises(CheckpointError, match="asks to call .*mkdir"):
        load_student(evil)
    assert not marker.exists()
    # the real checkpoint (configs stored as plain data) loads weights-only, with the trained weights
    ckpt = trained_run / "checkpoints" / "last.pt"
    stored = torch.load(ckpt, weights_only=True)
    json.dumps(stored["config"]), json.dumps(stored["distill"])  # plain JSON data, nothing else
    model = load_student(ckpt)
    got = model.state_dict()
    assert got and all(torch.equal(got[k], stored["model"]["model." + k]) for k in got)


# ---- 2. `cache --overwrite` deletes only a bevkd cache --------------------------------------------------

def _user_folder(root: Path) -> Path:
    (root / "photos").mkdir(parents=True)
    (root / "thesis.tex").write_text("\\section{Results}\n")
    (root / "photos" / "cat.jpg").write_bytes(bytes(range(256)))
    (root / ".hidden").write_text("keep me\n")
    return root


def test_cache_overwrite_refuses_a_folder_of_user_files(synth_dataroot, tmp_path, capsys):
    folder = _user_folder(tmp_path / "mine")
    before = file_hashes(folder)
    rc = main(["cache", "--dataroot", str(synth_dataroot), "--split", "mini_val", "--no-ray", "--teacher",
               "centerpoint", "--out", str(folder), "--overwrite", "--no-progress"])
    err = one_line(capsys.readouterr().err, "cache")
    assert rc == 2 and str(folder) in err and "not a bevkd cache" in err and "nothing was deleted" in err
    assert file_hashes(folder) == before and len(before) == 3


def test_overwrite_recognises_a_cache_by_its_own_metadata(synth_val_reader, tiny_teacher, tmp_path):
    from kd_cache import write_teacher_cache

    cache = write_teacher_cache(tmp_path / "cache", synth_val_reader, tiny_teacher, image_size=(176, 64))
    writer = CacheWriter.open(cache)
    assert is_cache(stores.open_store(cache))
    # the writer itself (every path that deletes) refuses a folder of user files and a plain Zarr
    # group of someone else's (no bevkd attributes)
    theirs = tmp_path / "theirs.zarr"
    zarr.open_group(str(theirs), mode="w", zarr_format=3).attrs["owner"] = "someone else"
    for folder in (_user_folder(tmp_path / "mine"), theirs):
        before = file_hashes(folder)
        assert not is_cache(stores.open_store(folder))
        with pytest.raises(NotACacheError, match=folder.name):
            CacheWriter.create(folder, writer.schema, writer.sample_tokens, overwrite=True)
        assert file_hashes(folder) == before
    # a real bevkd cache, an empty folder and an absent one may be replaced
    check_replaceable(stores.open_store(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    check_replaceable(stores.open_store(tmp_path / "empty"))
    (cache / "notes.txt").write_text("inside a cache's folder, yet the user's\n")  # refused, kept (test_faults_cli)
    with pytest.raises(NotACacheError, match="notes.txt"):
        CacheWriter.create(cache, writer.schema, writer.sample_tokens, overwrite=True)
    (cache / "notes.txt").unlink()
    again = CacheWriter.create(cache, writer.schema, writer.sample_tokens, overwrite=True)
    assert again.committed_shards() == []


# ---- 3. a checkpoint never names code to import ---------------------------------------------------------

def _marked_factory() -> torch.nn.Module:
    """A "teacher" factory that leaves a marker file: proof it was imported and called."""
    Path(os.environ[MARKER_ENV]).touch()
    return torch.nn.Linear(1, 1)


@pytest.mark.parametrize("stored_name", ["os:abort", "test_faults:_marked_factory"])
def test_a_checkpoint_may_name_only_a_registered_teacher(synth_dataroot, tmp_path, capsys, monkeypatch,
                                                         stored_name):
    marker = tmp_path / "marker"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    ckpt = tmp_path / "teacher.pt"
    torch.save({"teacher": stored_name, "config": {}, "state_dict": {}, "meta": {}}, ckpt)  # weights-only valid
    assert torch.load(ckpt, weights_only=True)["teacher"] == stored_name
    rc = main(["cache", "--dataroot", str(synth_dataroot), "--split", "mini_val", "--no-ray", "--checkpoint",
               str(ckpt), "--out", str(tmp_path / "cache"), "--no-progress"])
    err = one_line(capsys.readouterr().err, "cache")  # and this process is still alive
    assert rc == 2 and stored_name in err and "not registered" in err and str(ckpt) in err
    assert not marker.exists() and not (tmp_path / "cache").exists()
    with pytest.raises(CheckpointError, match="not registered"):
        load_teacher(None, checkpoint=ckpt)
    assert not marker.exists()


def test_a_factory_named_by_the_user_still_loads_with_its_checkpoint(tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    monkeypatch.setenv(MARKER_ENV, str(marker))
    ckpt = tmp_path / "mine.pt"
    torch.manual_seed(3)
    sha = save_checkpoint(torch.nn.Linear(1, 1), "test_faults:_marked_factory", ckpt)
    module, info = load_teacher("test_faults:_marked_factory", checkpoint=ckpt)  # the caller names it: allowed
    assert marker.exists() and info.weights_sha256 == sha and info.name == "test_faults:_marked_factory"


# ---- 8. a trained run is never replaced by accident -----------------------------------------------------

@pytest.mark.parametrize("bad", [["--steps", "0"], ["--steps", "-1"], ["--batch-size", "0"], ["--epochs", "0"]])
def test_train_refuses_a_run_that_takes_no_step(synth_dataroot, trained_run, capsys, bad):
    before = file_hashes(trained_run)
    capsys.readouterr()
    rc = main([*_train_args(synth_dataroot, trained_run, "--steps", "2"), *bad])
    err = one_line(capsys.readouterr().err, "train")
    assert rc == 2 and f"{bad[0]} must be at least 1, got {bad[1]}" in err
    assert file_hashes(trained_run) == before


def test_train_never_replaces_a_run_without_resume_or_overwrite(synth_dataroot, trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = file_hashes(run)
    capsys.readouterr()
    rc = main(_train_args(synth_dataroot, run, "--steps", "1"))
    err = one_line(capsys.readouterr().err, "train")
    assert rc == 2 and "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert file_hashes(run) == before
    # --overwrite replaces it: a fresh 1-step run, its own checkpoint and log
    assert main(_train_args(synth_dataroot, run, "--steps", "1", "--overwrite")) == 0
    assert [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()] == [1]
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["position"]["step"] == 1
