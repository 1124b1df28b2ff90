"""Teacher signal for a batch of texts: each teacher's byte targets, combined by the mixer.

Why a separate piece: the loop must not care whether targets come from teachers held on the device, teachers
swapped onto it one at a time (memory holds one), or a byte cache. All of them produce the same thing: for the
batch's texts concatenated, mixture log-probs [ΣN, 257] and a mask [ΣN]. Signals are called as
``signal(texts, chunk_indices)``: online teachers read the texts, a cache looks the chunk indices up.
"""

from __future__ import annotations

import torch

from ..bytes import ByteTargets


def stack_targets(per_teacher: list[list[ByteTargets]]) -> tuple[torch.Tensor, torch.Tensor]:
    """K teachers × B texts of ByteTargets → logprobs [K, ΣN, 257], masks [K, ΣN] (texts concatenated)."""
    logprobs = torch.stack([torch.cat([t.logprobs for t in texts]) for texts in per_teacher])
    masks = torch.stack([torch.cat([t.mask for t in texts]) for texts in per_teacher])
    return logprobs, masks


def actual_bytes(texts: list[str]) -> torch.Tensor:
    data = b"".join(t.encode("utf-8") for t in texts)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


class TeacherSignal:
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

    def __call__(self, texts: list[str], indices: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixture rows of the texts, concatenated. The mixer sees one text at a time, because sequence-level
        mixers (min-ce, softmax-ce) weight teachers per text."""
        per_teacher = self.per_teacher(texts, indices)
        return mix_per_text(self.mixer, texts, per_teacher)


def mix_per_text(mixer, texts: list[str], per_teacher: list[list[ByteTargets]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``mixer`` text by text to K teachers' targets; rows of all texts concatenated."""
    mixed, masks = [], []
    for i, text in enumerate(texts):
        logprobs, mask = stack_targets([[targets[i]] for targets in per_teacher])
        m, mm = mixer(logprobs, mask, actual=actual_bytes([text]))
        mixed.append(m)
        masks.append(mm)
    return torch.cat(mixed), torch.cat(masks)


def _move(teacher, device) -> None:
    """Move a teacher's weights (teachers hold ``.model``); byte targets follow the model's device."""
    model = getattr(teacher, "model", None)
    if model is not None:
        model.to(device)
