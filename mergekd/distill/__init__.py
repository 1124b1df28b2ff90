"""Distillation: config, batches with exact byte rows, objective, teacher signal, resumable loop, export."""

from .config import DistillConfig, load_config
from .loop import distill

__all__ = ["DistillConfig", "distill", "load_config"]
