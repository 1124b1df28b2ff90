"""TeacherSignal: the signal source of online teachers, held on the device or swapped onto it one at a time.

The contract (``names``, ``per_teacher``, mixing in ``__call__``, chat ``views``) is :mod:`mergekd.signal`'s; the
byte cache's source is :class:`mergekd.cache.CachedSignal`.

Chat views (:class:`~mergekd.distill.prompts.ChatTurn`): for a text with a view, each teacher reads the view's
context rendered its own way (:func:`~mergekd.distill.prompts.teacher_prompt`: its chat template's token ids, or
the plain rendering for a tokenizer without one) and then the reply; the rows of the reply's bytes go to the
view's [start, end) of the student's text, and every other row of that text is masked (no teacher row: prompt,
and markup the student's template writes around the reply). Texts without a view are scored as they are.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..bytes import ByteTargets
from ..signal import MixingSignal
from .prompts import ChatTurn, teacher_prompt


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

    def per_teacher(self, texts: list[str], indices: list[int] | None = None,
                    views: Sequence[ChatTurn | None] | None = None) -> list[list[ByteTargets]]:
        if views is not None and len(views) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(views)} views")
        results = []
        for teacher in self.teachers:
            if self.placement == "swap":
                _move(teacher, self.device)
            try:
                if views is None or all(v is None for v in views):
                    results.append(teacher.byte_targets(texts))
                else:
                    results.append(viewed_targets(teacher, texts, views))
            finally:
                if self.placement == "swap":
                    _move(teacher, "cpu")
        return results


def viewed_targets(teacher, texts: Sequence[str], views: Sequence[ChatTurn | None]) -> list[ByteTargets]:
    """One teacher's ByteTargets of ``texts``, each as long as its text: texts without a view scored as they are;
    a chat view's reply scored after the teacher's own rendering of its context, its rows placed at [start, end).

    All of a teacher's texts go through at most three ``byte_targets`` calls (plain texts; replies after template
    ids; plain-rendered chats), so batching is as for plain text."""
    out: list[ByteTargets | None] = [None] * len(texts)
    plain: list[int] = []
    templated: list[tuple[int, list[int]]] = []
    rendered: list[tuple[int, str]] = []
    for i, (text, view) in enumerate(zip(texts, views)):
        if view is None:
            plain.append(i)
            continue
        data = text.encode("utf-8")
        if not 0 <= view.start <= view.end <= len(data) or data[view.start:view.end] != view.reply.encode("utf-8"):
            raise ValueError(f"view {i} ({view.where or 'chat'}): its reply is not the text's bytes "
                             f"[{view.start}, {view.end})")
        if not view.reply:  # nothing to score (the reply was cut away, or the student wrote nothing)
            out[i] = _masked(data)
            continue
        ids, prompt = teacher_prompt(teacher.tokenizer, view.context, view.where, teacher.name)
        if ids is not None:
            templated.append((i, ids))
        else:
            rendered.append((i, prompt))
    if plain:
        for i, targets in zip(plain, teacher.byte_targets([texts[i] for i in plain])):
            out[i] = targets
    if templated:
        found = teacher.byte_targets([views[i].reply for i, _ in templated], contexts=[ids for _, ids in templated])
        for (i, _), targets in zip(templated, found):
            out[i] = _place(texts[i], views[i], targets, 0)
    if rendered:
        found = teacher.byte_targets([prompt + views[i].reply for i, prompt in rendered])
        for (i, prompt), targets in zip(rendered, found):
            out[i] = _place(texts[i], views[i], targets, len(prompt.encode("utf-8")))
    return out  # type: ignore[return-value]


def _masked(data: bytes) -> ByteTargets:
    return ByteTargets(logprobs=torch.full((len(data), 257), float("nan")),
                       mask=torch.zeros(len(data), dtype=torch.bool), text_bytes=data)


def _place(text: str, view: ChatTurn, targets: ByteTargets, offset: int) -> ByteTargets:
    """The reply rows of ``targets`` (from byte ``offset`` of the teacher's text) at [start, end) of ``text``."""
    data = text.encode("utf-8")
    placed = _masked(data)
    n = view.end - view.start
    if targets.text_bytes[offset:offset + n] != data[view.start:view.end]:  # the alignment every row relies on
        raise ValueError(f"{view.where or 'chat'}: the teacher scored other bytes than the reply's")
    placed.logprobs[view.start:view.end] = targets.logprobs[offset:offset + n].to(placed.logprobs.device)
    placed.mask[view.start:view.end] = targets.mask[offset:offset + n].to(placed.mask.device)
    placed.masked_lossy = targets.masked_lossy
    return placed


def _move(teacher, device) -> None:
    """Move a teacher's weights (teachers hold ``.model``); byte targets follow the model's device."""
    model = getattr(teacher, "model", None)
    if model is not None:
        model.to(device)
