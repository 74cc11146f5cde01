"""`bevkd train` like the field's trainers: the whole TrainConfig from YAML with dotted overrides
(round trip), split/version/student defaults, periodic devkit evaluation in the JSONL, TensorBoard
events, ImageNet backbone weights from a torchvision-format file, and one-line errors (bad config
keys, --batch-size 0, a corrupt cache chunk read by a DataLoader worker)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import yaml

from cli_checks import one_line
from pipeline.cli import main
from pipeline.cmd_train import _resolve_dataset, add_arguments, eval_split
from storage.cache import CacheReader
from storage.errors import CheckpointError
from student.config import BackboneConfig, StudentConfig
from student.config_io import dump_yaml
from student.losses import DistillationConfig, LossWeights
from student.model.resnet import ResNet, load_backbone_weights
from student.train_config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: torch on one thread for this module


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_full_train_config_round_trips_through_yaml():
    config = TrainConfig(student=StudentConfig.tiny(simdistill=True),
                         distill=DistillationConfig(weights=LossWeights(instance=0.25, heatmap=2.0), warmup_steps=7,
                                                    fusion_teacher=("a", "b", "c")),
                         steps=9, lr=1e-3, distance_bands=(0.0, 20.0, 1e9), stop_after=3, eval_every=2,
                         tensorboard=True, backbone_weights="w.pth", workers=3)
    text = dump_yaml(config.to_dict())
    back = TrainConfig.from_dict(yaml.safe_load(text))
    assert back == config and back != TrainConfig()
    assert TrainConfig.from_dict(yaml.safe_load(dump_yaml(TrainConfig().to_dict()))) == TrainConfig()


def test_print_config_applies_file_flags_and_dotted_overrides(tmp_path, capsys):
    rc = main(["train", "--student", "tiny", "--print-config", "--lr", "0.001", "--set", "data.image_aug=null",
               "--set", "distill.weights.instance=0.25", "--set", "student.image_hw=[128, 352]"])
    text = capsys.readouterr().out
    assert rc == 0, text
    config = TrainConfig.from_dict(yaml.safe_load(text))
    assert config.lr == 0.001 and config.data.image_aug is None and config.student.image_hw == (128, 352)
    assert config.student.backbone == BackboneConfig(depth=18, base_width=16)  # the tiny preset, not base
    assert config.distill is not None and config.distill.weights.instance == 0.25
    assert config.distill.weights.depth_bce == 3.0  # the rest of the recipe is kept, not reset to defaults
    # the printed config, read back as --config, resolves to itself; flags given still win over the file
    path = tmp_path / "run.yaml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--print-config"]) == 0
    assert capsys.readouterr().out == text
    assert main(["train", "--config", str(path), "--print-config", "--batch-size", "5", "--no-progress"]) == 0
    again = TrainConfig.from_dict(yaml.safe_load(capsys.readouterr().out))
    assert again.batch_size == 5 and not again.progress and again.lr == 0.001
    assert main(["train", "--print-config", "--device", "cpu"]) == 0  # no accelerator asked for: the tiny student
    assert TrainConfig.from_dict(yaml.safe_load(capsys.readouterr().out)).student == StudentConfig.tiny()


@pytest.mark.parametrize("argv, needle", [
    (["--set", "distill.weights.instnce=1"], "distill.weights.instnce: unknown LossWeights field"),
    (["--set", "lr=fast"], "lr: expected float"),
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--set", "batch_size=0"], "batch_size must be at least 1"),
    (["--config", "/nonexistent/run.yaml"], "/nonexistent/run.yaml"),
])
def test_bad_config_or_flag_is_one_line_on_stderr(argv, needle, capsys):
    rc = main(["train", "--student", "tiny", "--print-config", *argv])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and needle in one_line(err, "train")


def test_split_and_version_default_to_the_cache_then_to_the_training_split(synth_dataroot, student_cache):
    args = _args("--dataroot", str(synth_dataroot))
    _resolve_dataset(args, None)
    assert (args.version, args.split, eval_split(args)) == ("v1.0-mini", "mini_train", "mini_val")
    args = _args("--dataroot", str(synth_dataroot), "--cache", str(student_cache))
    _resolve_dataset(args, CacheReader(student_cache))  # the cache was written over mini_val
    assert (args.version, args.split, eval_split(args)) == ("v1.0-mini", "mini_val", "mini_val")
    args = _args("--dataroot", str(synth_dataroot), "--split", "train", "--version", "v1.0-trainval")
    _resolve_dataset(args, None)
    assert eval_split(args) == "val"


def test_help_says_what_the_code_does():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "resampled onto the student's grid" in text and "refused if its grid" not in text
    assert "--loader-workers" in text and "else tiny" in text and "--image-hw" not in text


def test_eval_every_and_tensorboard_log_beside_the_jsonl(synth_dataroot, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    rc = main(["train", "--dataroot", str(synth_dataroot), "--out", str(out), "--student", "tiny", "--steps", "2",
               "--batch-size", "2", "--workers", "0", "--eval-every", "1", "--tensorboard", "--no-progress"])
    std = capsys.readouterr()
    assert rc == 0, std.err
    assert "--workers is deprecated" in std.err and "train: warning" not in std.err  # mini_train vs mini_val
    lines = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("event", "step")) for r in lines] == [(1, "step"), (1, "eval"), (2, "step"),
                                                                   (2, "eval")]
    evals = [r for r in lines if r.get("event") == "eval"]
    assert all(r["split"] == "mini_val" and 0.0 <= r["NDS"] <= 1.0 and len(r["per_class_ap"]) == 10 for r in evals)
    assert (out / "eval" / "step_0000001" / "metrics_summary.json").exists()
    assert json.loads((out / "eval" / "metrics_summary.json").read_text())["nd_score"] == pytest.approx(evals[1]["NDS"])
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/total", "loss/detection_heatmap", "lr", "eval/mAP", "eval/NDS"} <= tags
    assert [e.step for e in acc.Scalars("loss/total")] == [1, 2]
    assert [e.value for e in acc.Scalars("loss/total")] == pytest.approx([r["total"] for r in lines if "total" in r])


def _torchvision_state(model: ResNet) -> dict[str, torch.Tensor]:
    """A state dict as torchvision's resnet files hold it: the trunk's names plus the classifier."""
    state = {k: torch.randn_like(v) if v.is_floating_point() else v + 3 for k, v in model.state_dict().items()}
    width = model.out_channels[-1]
    return state | {"fc.weight": torch.randn(1000, width), "fc.bias": torch.randn(1000)}


def test_backbone_weights_load_by_torchvision_names(tmp_path):
    torch.manual_seed(0)
    model = ResNet(18, 16)
    state = _torchvision_state(model)
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.bn1.running_mean", "layer2.0.downsample.0.weight",
            "layer4.1.conv2.weight"} <= set(state)
    del state["layer4.1.bn2.bias"]
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    before = model.layer4[1].bn2.bias.clone()
    message = load_backbone_weights(model, path)
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in state.items() if k in got)
    assert torch.equal(got["layer4.1.bn2.bias"], before)
    assert "missing 1 (layer4.1.bn2.bias)" in message and "unexpected 1 (layer5.0.conv1.weight)" in message
    assert "\n" not in message
    with pytest.raises(CheckpointError, match="conv1.weight has shape"):
        load_backbone_weights(ResNet(18, 32), path)  # weights of another width


def test_cli_loads_backbone_weights_or_warns_about_training_from_scratch(synth_dataroot, tmp_path, capsys):
    wide = ["--set", "student.backbone.base_width=64"]  # a full-width backbone (the base student's)
    common = ["train", "--dataroot", str(synth_dataroot), "--student", "tiny", "--steps", "1", "--batch-size", "1",
              "--loader-workers", "0", "--no-eval", "--no-progress", *wide]
    assert main([*common, "--out", str(tmp_path / "scratch")]) == 0
    err = capsys.readouterr().err
    assert "WARNING: the ResNet-18 backbone trains from scratch" in err and "--backbone-weights" in err
    from student.model import StudentModel
    from student.config_io import from_plain

    student = from_plain(StudentConfig, StudentConfig.tiny().to_dict() | {"backbone": {"depth": 18, "base_width": 64}})
    path = tmp_path / "resnet18.pth"
    state = _torchvision_state(StudentModel(student).backbone)
    torch.save(state, path)
    assert main([*common, "--out", str(tmp_path / "pretrained"), "--backbone-weights", str(path)]) == 0
    err = capsys.readouterr().err
    assert "from scratch" not in err and f"loaded {len(state) - 2} tensors from {path}; missing 0, unexpected 0" in err


def test_corrupt_chunk_read_by_a_loader_worker_is_one_line(synth_dataroot, student_cache, tmp_path, capsys):
    import shutil

    broken = tmp_path / "cache"
    shutil.copytree(student_cache, broken)
    chunks = sorted(p for p in (broken / "targets").rglob("*") if p.is_file() and "/c/" in str(p))
    assert chunks
    for chunk in chunks:  # every stored chunk: whichever row the loader reads first is corrupt
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0xFF
        chunk.write_bytes(bytes(data))
    rc = main(["train", "--dataroot", str(synth_dataroot), "--cache", str(broken), "--out", str(tmp_path / "run"),
               "--student", "tiny", "--steps", "1", "--batch-size", "1", "--loader-workers", "1", "--no-eval",
               "--no-progress"])
    err = one_line(capsys.readouterr().err, "train")
    assert rc == 2 and str(broken) in err and "sample " in err and "corrupt" in err
