"""Test helper: the tiny student config the student tests share, and the camera image size
(``(w, h)`` pixels) that their teacher-target caches are written at (``conftest.student_cache``)."""

from __future__ import annotations

from student.config import StudentConfig


def image_wh(config: StudentConfig) -> tuple[int, int]:
    """``(w, h)`` pixels of ``config``'s camera images: the ``image_size`` a cache for it is written with
    (``config.image_hw`` is ``(h, w)``)."""
    return (config.image_hw[1], config.image_hw[0])


#: The tiny student (64x176 images) and its image size as ``(w, h)``.
CFG = StudentConfig.tiny()
IMAGE_WH = image_wh(CFG)
