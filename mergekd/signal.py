"""The one signal contract: what every source of teacher rows produces, and the one place mixing happens.

Why: the distillation loop, on-policy scoring and the reports must not care whether the rows come from teachers
held on the device, teachers swapped onto it one at a time, a byte cache or (later) an inference server. Every
source implements :class:`SignalSource` (``names`` and ``per_teacher(texts, indices, views)``) and subclasses
:class:`MixingSignal`, which applies the mixer text by text; nothing else mixes.

    signal(texts, chunk_indices, views)            → (mixture log-probs [ΣN, 257], mask [ΣN])  texts concatenated
    signal.byte_signal(texts, chunk_indices, views) → ByteSignal (per-teacher rows [K, ΣN, 257] + masks [K, ΣN])

Online teachers read the texts; a cache looks the chunk indices up.

Views (``views``: None, or one entry per text): ``views[i]`` None means every teacher scores text ``i`` as it
is. A :class:`~mergekd.distill.prompts.ChatTurn` means text ``i`` is a chat in the student's rendering whose
reply lies at bytes [start, end): each teacher renders the view's context with its *own* chat template, scores
the reply after it, and its rows land at [start, end) of text ``i``; every other row of that text is masked for
every teacher (``TeacherSignal``). Rows always stay aligned to the student's text, so mixing and the loss need
nothing new. A source that cannot honour views (a byte cache holds plain-text chunks only) refuses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch

from .bytes import ByteTargets


@dataclass(frozen=True)
class ByteSignal:
    """K teachers' byte rows for a batch of texts, concatenated: ``logprobs`` [K, ΣN, 257] float32 (natural log;
    undefined rows NaN), ``masks`` [K, ΣN] bool, ``names`` the K teachers in order."""

    logprobs: torch.Tensor
    masks: torch.Tensor
    names: list[str]


@runtime_checkable
class SignalSource(Protocol):
    """Anything that gives K teachers' ByteTargets for texts (looked up by chunk index where it needs them)."""

    @property
    def names(self) -> list[str]: ...

    def per_teacher(self, texts: list[str], indices: list[int] | None = None,
                    views: Sequence | None = None) -> list[list[ByteTargets]]: ...


class MixingSignal:
    """Base of every signal source: subclasses set ``mixer`` and implement ``names`` and ``per_teacher``."""

    mixer = None

    def byte_signal(self, texts: list[str], indices: list[int] | None = None,
                    views: Sequence | None = None) -> ByteSignal:
        logprobs, masks = stack_targets(self.per_teacher(texts, indices, **_views(texts, views)))
        return ByteSignal(logprobs, masks, list(self.names))

    def __call__(self, texts: list[str], indices: list[int] | None = None,
                 views: Sequence | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixture rows of the texts, concatenated. The mixer sees one text at a time, because sequence-level
        mixers (min-ce, softmax-ce) weight teachers per text."""
        return mix_per_text(self.mixer, texts, self.per_teacher(texts, indices, **_views(texts, views)))


def _views(texts: list[str], views: Sequence | None) -> dict:
    """``views`` as a keyword for ``per_teacher``, left out when there is none to pass (so a source written before
    views existed keeps working on plain text)."""
    if views is None or all(v is None for v in views):
        return {}
    if len(views) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(views)} views")
    return {"views": list(views)}


def stack_targets(per_teacher: list[list[ByteTargets]]) -> tuple[torch.Tensor, torch.Tensor]:
    """K teachers × B texts of ByteTargets → logprobs [K, ΣN, 257], masks [K, ΣN] (texts concatenated)."""
    logprobs = torch.stack([torch.cat([t.logprobs for t in texts]) for texts in per_teacher])
    masks = torch.stack([torch.cat([t.mask for t in texts]) for texts in per_teacher])
    return logprobs, masks


def actual_bytes(texts: Sequence[str]) -> torch.Tensor:
    """int64 [ΣN]: the texts' UTF-8 bytes, concatenated (what each byte row predicts)."""
    data = b"".join(t.encode("utf-8") for t in texts)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def mix_per_text(mixer, texts: list[str], per_teacher: list[list[ByteTargets]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``mixer`` text by text to K teachers' targets; rows of all texts concatenated."""
    mixed, masks = [], []
    for i, text in enumerate(texts):
        logprobs, mask = stack_targets([[targets[i]] for targets in per_teacher])
        m, mm = mixer(logprobs, mask, actual=actual_bytes([text]))
        mixed.append(m)
        masks.append(mm)
    return torch.cat(mixed), torch.cat(masks)
