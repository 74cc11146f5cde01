"""The camera-only student, its distillation losses, streaming dataset and trainer."""
