"""Detection and distillation losses of the student, one module per loss family."""

from student.losses.combined import DistillationLoss, LossBreakdown
from student.losses.config import DistillationConfig, LossWeights
from student.losses.targets import TeacherSpec, TeacherTargets

__all__ = ["DistillationConfig", "DistillationLoss", "LossBreakdown", "LossWeights", "TeacherSpec", "TeacherTargets"]
