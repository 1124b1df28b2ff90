"""TeacherSignal: the signal source of online teachers, held on the device or swapped onto it one at a time.

The contract (``names``, ``per_teacher``, mixing in ``__call__``) is :mod:`mergekd.signal`'s; the byte cache's
source is :class:`mergekd.cache.CachedSignal`.
"""

from __future__ import annotations

import torch

from ..bytes import ByteTargets
from ..signal import MixingSignal


class TeacherSignal(MixingSignal):
    """Online teachers + a mixer. ``placement='swap'`` keeps teachers on the CPU between uses."""

    def __init__(self, teachers: list, mixer, device: torch.device, placement: str = "device"):
        self.teachers = teachers
        self.mixer = mixer
        self.device = device
        self.placement = placement
        if placement == "device":
            for t in teachers:
                _move(t, device)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.teachers]

    def per_teacher(self, texts: list[str], indices: list[int] | None = None) -> list[list[ByteTargets]]:
        results = []
        for teacher in self.teachers:
            if self.placement == "swap":
                _move(teacher, self.device)
            try:
                results.append(teacher.byte_targets(texts))
            finally:
                if self.placement == "swap":
                    _move(teacher, "cpu")
        return results


def _move(teacher, device) -> None:
    """Move a teacher's weights (teachers hold ``.model``); byte targets follow the model's device."""
    model = getattr(teacher, "model", None)
    if model is not None:
        model.to(device)
