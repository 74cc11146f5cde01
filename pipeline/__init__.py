"""Orchestration: the Ray cache job, the `bevkd` CLI and the end-to-end demo."""
