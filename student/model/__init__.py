"""The camera-only BEV student model (BEVDepth / LSS style, optional SimDistill branch)."""

from student.model.detector import StudentModel
from student.model.types import STUDENT_BEV_MAPS, StudentBatch, StudentOutput

__all__ = ["STUDENT_BEV_MAPS", "StudentBatch", "StudentModel", "StudentOutput"]
