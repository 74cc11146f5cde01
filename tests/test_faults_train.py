"""`bevkd train` (and the image-size flags of every command) refuse bad input with one line and exit
code 2: a config path that is a folder, out-of-range config values (named by dotted key), a
non-positive --image-hw, an unlabelled cache without its dataroot, --resume with nothing to resume
or with a changed config, and a run folder overlapping the cache."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from cli_checks import one_line
from pipeline.cli import main
from student.config_io import ConfigError
from student.losses import LossWeights
from student.train_config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread for this module


def _print_config(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["train", "--student", "tiny", "--print-config", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_config_path_that_is_a_directory_is_one_line(tmp_path, capsys):
    rc, out, err = _print_config(capsys, "--config", str(tmp_path))
    assert rc == 2 and out == "" and f"config {tmp_path}: is a directory" in one_line(err, "train")


@pytest.mark.parametrize("argv, needle", [
    (["--set", "distill.weights.instance=-2"], "distill.weights.instance must be >= 0"),
    (["--set", "distill.weights.detection=.inf"], "distill.weights.detection must be >= 0"),
    (["--set", "data.image_aug.flip_prob=1.5"], "data.image_aug.flip_prob must be in [0, 1], got 1.5"),
    (["--set", "data.image_aug.crop_up=-0.1"], "data.image_aug.crop_up must be in [0, 1]"),
    (["--set", "data.bev_aug.flip_prob=-3"], "data.bev_aug.flip_prob must be in [0, 1], got -3.0"),
    (["--set", "data.bev_aug.scale_range=[0, 1]"], "data.bev_aug.scale_range must be above 0"),
    (["--set", "lr=-1"], "lr must be > 0"),
    (["--set", "lr=0"], "lr must be > 0"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--set", "weight_decay=-0.1"], "weight_decay must be >= 0"),
    (["--set", "student.image_hw=[0, 0]"], "student.image_hw must be positive"),
    (["--set", "student.bev_channels=0"], "student.bev_channels must be at least 1"),
    (["--set", "student.backbone.base_width=0"], "student.backbone.base_width must be at least 1"),
    (["--set", "data.depth_stride=0"], "data.depth_stride must be at least 1"),
    (["--set", "distill.instance_temperature=0"], "distill.instance_temperature must be > 0"),
    (["--set", "distill.pseudo_label_min_score=2"], "distill.pseudo_label_min_score must be in [0, 1]"),
])
def test_out_of_range_config_value_names_its_dotted_key(argv, needle, capsys):
    rc, out, err = _print_config(capsys, *argv)
    assert rc == 2 and out == "" and needle in one_line(err, "train")


def test_config_ranges_hold_for_files_and_python_too(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  image_aug:\n    flip_prob: 1.5\n")
    rc, _, err = _print_config(capsys, "--config", str(path))
    assert rc == 2 and "data.image_aug.flip_prob must be in [0, 1]" in one_line(err, "train")
    with pytest.raises(ConfigError, match=r"^distill\.weights\.heatmap must be >= 0"):
        TrainConfig.from_dict({"distill": {"weights": {"heatmap": -1.0}}})
    with pytest.raises(ValueError, match=r"LossWeights\.instance must be >= 0"):
        LossWeights(instance=-2.0)
    with pytest.raises(ValueError, match=r"TrainConfig\.lr must be > 0"):
        TrainConfig(lr=-1.0)
    # in range is accepted, also the exponent notation YAML 1.1 reads as text
    rc, out, err = _print_config(capsys, "--set", "lr=1e-3", "--set", "data.image_aug.flip_prob=1",
                                 "--set", "distill.weights.instance=0")
    assert rc == 0, err
    config = TrainConfig.from_dict(yaml.safe_load(out))
    assert config.lr == 0.001 and config.data.image_aug is not None and config.data.image_aug.flip_prob == 1.0


@pytest.mark.parametrize("argv, flag", [
    (["cache", "--dataroot", "nowhere", "--out", "c", "--image-hw", "-5", "100"], "--image-hw"),
    (["cache", "--dataroot", "nowhere", "--out", "c", "--image-size", "100", "0"], "--image-size"),
    (["cache", "--dataroot", "nowhere", "--out", "c", "--teacher-image-hw", "0", "64"], "--teacher-image-hw"),
    (["synth", "--out", "s", "--image-hw", "0", "100"], "--image-hw"),
    (["synth", "--out", "s", "--image-size", "100", "-1"], "--image-size"),
    (["train-teacher", "--image-hw", "64", "-16"], "--image-hw"),
])
def test_non_positive_image_size_is_an_argparse_error_naming_the_flag(argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may be written; if it were, not into the repository
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument {flag}: must be a positive integer" in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [["--unlabelled-cache", "somewhere"], ["--unlabelled-split", "mini_train"]])
def test_unlabelled_options_without_unlabelled_dataroot_are_refused(argv, capsys):
    rc, out, err = _print_config(capsys, *argv)
    assert rc == 2 and out == "" and f"{argv[0]} needs --unlabelled-dataroot" in one_line(err, "train")


def _train(dataroot, out, *extra: str) -> list[str]:
    return ["train", "--dataroot", str(dataroot), "--student", "tiny", "--batch-size", "1", "--loader-workers", "0",
            "--device", "cpu", "--no-eval", "--no-progress", "--out", str(out), *extra]


def test_resume_with_nothing_to_resume_is_refused(synth_dataroot, tmp_path, capsys):
    out = tmp_path / "fresh"
    rc = main(_train(synth_dataroot, out, "--steps", "1", "--resume"))
    err = capsys.readouterr().err
    assert rc == 2 and f"nothing to resume in {out}: no checkpoints/last.pt" in one_line(err, "train")
    assert "drop --resume" in err and not out.exists()
    # a run stopped before its first checkpoint left its log: the way on is --overwrite (plain would be refused)
    out.mkdir()
    (out / "train_log.jsonl").write_text('{"step": 1}\n')
    rc = main(_train(synth_dataroot, out, "--steps", "1", "--resume"))
    err = capsys.readouterr().err
    assert rc == 2 and "before its first checkpoint; pass --overwrite" in one_line(err, "train")
    assert (out / "train_log.jsonl").read_text() == '{"step": 1}\n' and not (out / "checkpoints").exists()


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_run_folder_overlapping_the_cache_is_refused(where, synth_dataroot, student_cache, tmp_path, capsys):
    cache = tmp_path / "parent" / "cache"
    shutil.copytree(student_cache, cache)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = {"same": cache, "inside": cache / "run", "around": cache.parent}[where]
    rc = main(_train(synth_dataroot, out, "--cache", str(cache), "--steps", "1"))
    err = capsys.readouterr().err
    assert rc == 2 and f"run folder {out} and cache {cache} overlap" in one_line(err, "train")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_resume_with_another_config_names_the_keys_that_differ(synth_dataroot, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train(synth_dataroot, out, "--steps", "400", "--stop-after", "1")) == 0
    capsys.readouterr()
    checkpoint = out / "checkpoints" / "last.pt"
    saved = checkpoint.read_bytes()
    rc = main(_train(synth_dataroot, out, "--steps", "400", "--resume", "--set", "student.bev_channels=64",
                     "--set", "distill.weights.depth_bce=1.0"))
    err = one_line(capsys.readouterr().err, "train")
    assert rc == 2 and f"cannot resume {checkpoint}" in err
    assert "student.bev_channels: 32 in the checkpoint, 64 now" in err
    assert "distill.weights.depth_bce: 3.0 in the checkpoint, 1.0 now" in err and "steps" in err
    assert checkpoint.read_bytes() == saved  # the refused resume wrote nothing
    # what a resume may change: the run's length, this invocation's settings, evaluation
    rc = main(_train(synth_dataroot, out, "--steps", "5", "--resume", "--stop-after", "1", "--checkpoint-every", "1",
                     "--eval-every", "3"))
    assert rc == 0, capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
