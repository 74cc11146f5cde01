"""Our own ResNet-18/34/50 image backbone (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016, Table 1).

Parameter names match torchvision's ``resnet*`` (``conv1.weight``, ``bn1.running_mean``,
``layer1.0.conv1.weight``, ``layer2.0.downsample.0.weight`` ...), so a torchvision ImageNet state
dict file loads directly (:func:`load_backbone_weights`, weights-only), and
:func:`load_torchvision_weights` copies them when torchvision is installed (it is not a
dependency of bevkd; the import is guarded).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from storage.checkpoint import load_checkpoint
from storage.errors import CheckpointError

#: blocks per stage for each depth (He et al. Table 1).
_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    """Two 3x3 convs with identity shortcut (ResNet-18/34)."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(c_in, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck, stride on the 3x3 (ResNet v1.5, as torchvision)."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module | None:
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


class ResNet(nn.Module):
    """ResNet trunk returning the four stage outputs C2..C5 (strides 4, 8, 16, 32).

    Args:
        depth: 18, 34 or 50.
        base_width: channels of the stem / first stage (64 = standard).

    Raises:
        ValueError: unknown depth.
    """

    def __init__(self, depth: int = 50, base_width: int = 64) -> None:
        super().__init__()
        if depth not in _LAYERS:
            raise ValueError(f"ResNet: depth must be one of {sorted(_LAYERS)}, got {depth}")
        self.depth = depth
        block = Bottleneck if depth == 50 else BasicBlock
        self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in, channels = base_width, []
        for i, n in enumerate(_LAYERS[depth]):
            width = base_width * 2 ** i
            blocks = [block(c_in if j == 0 else width * block.expansion, width, 2 if (i > 0 and j == 0) else 1)
                      for j in range(n)]
            c_in = width * block.expansion
            channels.append(c_in)
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        #: channels of C2..C5
        self.out_channels: tuple[int, ...] = tuple(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``x``: ``(N, 3, h, w)`` normalised RGB -> ``[C2, C3, C4, C5]``, ``(N, C_i, h/s, w/s)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs


def load_torchvision_weights(model: ResNet) -> bool:
    """Copy torchvision's ImageNet weights into ``model`` when torchvision is importable.

    Returns:
        True when weights were loaded; False when torchvision is not installed, the width is
        not the standard 64, or the weights cannot be fetched (no network). Never raises for
        those cases: pretrained weights are an optional speed-up, not a requirement.
    """
    try:
        import torchvision  # noqa: PLC0415  (optional dependency)
    except ImportError:
        return False
    if model.conv1.out_channels != 64:
        return False
    try:
        tv = getattr(torchvision.models, f"resnet{model.depth}")(weights="DEFAULT")
    except Exception:  # noqa: BLE001  (download failures of an optional extra)
        return False
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    model.load_state_dict(state, strict=True)
    return True


def load_backbone_weights(model: ResNet, path: str | os.PathLike[str]) -> str:
    """Copy a torchvision-format ResNet state dict file (e.g. ``resnet50-11ad3fa6.pth``) into ``model``.

    The file is loaded weights-only (nothing in it runs). Keys are torchvision's
    (``conv1.weight``, ``layer1.0.bn1.running_mean`` ...); a ``{"state_dict": ...}`` wrapper and
    a DDP ``module.`` prefix are accepted; the classifier ``fc.*`` is ignored.

    Returns:
        One line saying what was loaded: tensors copied, and the missing (left at their
        initialisation) and unexpected (ignored) keys, the first few named.

    Raises:
        storage.errors.CheckpointError: file missing, unreadable or refused; not a state dict; a
            tensor whose shape differs from the model's (e.g. ResNet-50 weights into a ResNet-18),
            or no key of the model at all (named in the message with the file).
    """
    state = load_checkpoint(path, map_location="cpu")
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path}: not a state dict of tensors (a torchvision resnet*.pth file)")
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.removeprefix("module.").startswith("fc.")}
    own = model.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(f"checkpoint {path}: {k} has shape {tuple(v.shape)}, the ResNet-{model.depth} "
                                  f"(width {model.conv1.out_channels}) backbone expects {tuple(own[k].shape)}")
    result = model.load_state_dict(state, strict=False)
    loaded = len(state) - len(result.unexpected_keys)
    if loaded == 0:
        raise CheckpointError(f"checkpoint {path}: none of its {len(state)} keys is a ResNet parameter name "
                              f"(first: {next(iter(state), None)!r}; expected e.g. 'conv1.weight')")

    def few(keys: list[str]) -> str:
        return f"{len(keys)}" + (f" ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" if keys else "")

    return (f"loaded {loaded} tensors from {path}; missing {few(list(result.missing_keys))}, "
            f"unexpected {few(list(result.unexpected_keys))}, fc.* ignored")
