"""Is every camera image of a sample there and decodable? (``bevkd info``; the cache job checks per row.)"""

from __future__ import annotations

import os

from storage.errors import SampleError
from storage.sample import Sample

#: ``header``: open and parse the header only; ``draft``: JPEG DCT-scaled 1/8 decode (reads the whole
#: stream, ~10x cheaper than a full decode); ``decode``: full decode; ``none``: no check.
IMAGE_CHECKS = ("header", "draft", "decode", "none")


def broken_images(sample: Sample, mode: str = "draft") -> list[SampleError]:
    """One :class:`SampleError` per camera image of ``sample`` that is missing, empty (0 bytes),
    undecodable, or of another size than recorded; empty when all are fine.

    Args:
        sample: the sample whose ``cameras`` are checked.
        mode: one of :data:`IMAGE_CHECKS`.

    Raises:
        ValueError: unknown ``mode``.
    """
    if mode not in IMAGE_CHECKS:
        raise ValueError(f"image check must be one of {IMAGE_CHECKS}, got {mode!r}")
    if mode == "none":
        return []
    from PIL import Image, UnidentifiedImageError  # lazy: keep `import storage` light

    out = []
    for cam in sample.cameras:
        def err(problem: str, name: str = cam.name, path: str = cam.image_path) -> SampleError:
            return SampleError(sample.sample_token, f"{name} image", problem, path)

        try:
            if os.path.getsize(cam.image_path) == 0:
                out.append(err("empty (0 bytes)"))
                continue
            with Image.open(cam.image_path) as im:
                size = im.size
                if mode == "draft":
                    im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                if mode != "header":
                    im.load()
        except FileNotFoundError:
            out.append(err("missing"))
            continue
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            out.append(err(f"unreadable ({exc})"))
            continue
        if tuple(size) != tuple(cam.image_size):
            out.append(err(f"is {size[0]}x{size[1]}, recorded {cam.image_size[0]}x{cam.image_size[1]}"))
    return out


__all__ = ["IMAGE_CHECKS", "broken_images"]
