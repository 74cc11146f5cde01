"""Detection and distillation losses of the student, one module per loss family."""

from student.losses.combined import DistillationLoss, LossBreakdown
from student.losses.config import DistillationConfig, LossWeights
from student.losses.teacher_targets import TeacherShapes, TeacherTargets

__all__ = ["DistillationConfig", "DistillationLoss", "LossBreakdown", "LossWeights", "TeacherShapes", "TeacherTargets"]
