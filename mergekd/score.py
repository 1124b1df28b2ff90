"""``mergekd score``: bits per byte of a text under each teacher's byte distributions and under their mixture.

Why this measure: teachers with different tokenizers cannot be compared by token perplexity, but every one of
them predicts the same bytes. BPB = −Σ log2 P(byte_j | bytes < j) / (number of scored bytes), over the rows
where the teacher (or the mixture) is defined. The same number tells how much a mixture gains over its
members, which is the point of distilling an ensemble.

Data: any data source spec that ``mergekd distill --data`` reads (``.txt``, ``.jsonl``, Parquet, CSV, Arrow,
globs of shards...; :mod:`mergekd.sources`), in stream order. Documents are cut into independent chunks of
``chunk_bytes`` bytes (ending at whitespace where one is near; :func:`mergekd.data.chunk_text`) by the same
reader that cuts training and held-out text, so a whole book is scored in
pieces of a few KB and every teacher and the mixture see exactly the same contexts. Chunks are predicted
independently: the first bytes of a chunk have no context (and no prediction at all for a teacher whose
tokenizer adds no BOS token — hence each teacher's own count of scored bytes).

Memory: teachers are loaded one at a time (load, compute targets, free), so memory holds one teacher plus
K × N × 257 float32 targets (≈ 1 KB per byte per teacher; use ``max_bytes`` for very large files).
Learned mixers (``learned``, ``gated``) are fit on ``fit_data`` only — never on the scored data.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch

from .text import head as text_head
from .signal import actual_bytes  # noqa: F401  (re-exported: score's callers use it)
from .errors import ConfigError, EmptyTextError, NonFiniteError

DEFAULT_CHUNK_BYTES = 4096
DEFAULT_MIX = "linear"
LEARNED_MIXERS = ("learned", "gated")  # mixers that must see fit data when they do not say so themselves


class ScoreProgress(Protocol):
    """What :func:`score` reports while it works (the CLI draws a rich progress bar from it)."""

    def message(self, text: str) -> None: ...

    def start(self, label: str, total_bytes: int) -> None: ...

    def advance(self, n_bytes: int) -> None: ...


class _Silent:
    def message(self, text: str) -> None:
        pass

    def start(self, label: str, total_bytes: int) -> None:
        pass

    def advance(self, n_bytes: int) -> None:
        pass


@dataclass
class TeacherScore:
    name: str
    family: str
    vocab_size: int
    bpb: float
    bytes_scored: int
    bpb_common: float  # over the rows every teacher defines: the like-for-like comparison
    load_seconds: float
    score_seconds: float


@dataclass
class MixtureScore:
    name: str
    bpb: float
    bytes_scored: int
    weights: dict[str, Any]
    fit_bytes: int


@dataclass
class ScoreReport:
    data: str
    bytes: int
    chunks: int
    common_bytes: int
    teachers: list[TeacherScore] = field(default_factory=list)
    mixture: MixtureScore | None = None

    def to_json(self) -> dict[str, Any]:
        """``{"bytes": N, "teachers": {name: {"bpb": x, ...}}, "mixture": {"name": m, "bpb": y, "weights": ...}}``
        plus counts and timings."""
        out: dict[str, Any] = {"data": self.data, "bytes": self.bytes, "chunks": self.chunks,
                               "common_bytes": self.common_bytes,
                               "teachers": {t.name: {k: v for k, v in asdict(t).items() if k != "name"}
                                            for t in self.teachers}}
        out["mixture"] = asdict(self.mixture) if self.mixture is not None else None
        return _finite_or_none(out)


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN/Infinity: a BPB over zero rows (NaN) is written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------


def load_score_texts(path: Path | str, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                     max_bytes: int | None = None) -> list[str]:
    """The chunks of a data file to score (see module docstring); at most ``max_bytes`` bytes in total (the
    last chunk is cut at a character boundary). Whitespace-only chunks are skipped."""
    if chunk_bytes < 16:
        raise ConfigError(f"chunk_bytes={chunk_bytes}: use at least 16 bytes (a few KB is typical)")
    if max_bytes is not None and max_bytes < 1:
        raise ConfigError(f"max_bytes={max_bytes}: must be a positive number of bytes")
    from .evaluate import held_out_chunks

    try:  # the held-out reader of `mergekd eval` (stream order, stops at the chunk reaching max_bytes), then cut
        texts = [t for t in _pieces(held_out_chunks(path, chunk_bytes, max_bytes), max_bytes) if t.strip()]
    except EmptyTextError:
        texts = []
    if not texts:
        raise EmptyTextError(f"data file {path} holds no text to score")
    return texts


def _pieces(chunks, max_bytes: int | None):
    """The chunks up to ``max_bytes`` bytes in total: the last one is cut at a character boundary (a partial
    character is dropped)."""
    budget = max_bytes if max_bytes is not None else math.inf
    for piece in chunks:
        size = len(piece.encode("utf-8"))
        if size >= budget:
            yield text_head(piece, int(budget))
            return
        yield piece
        budget -= size


def realised_byte_bpb(logprobs: torch.Tensor, mask: torch.Tensor, actual: torch.Tensor, who: str) -> tuple[float, int]:
    """(−Σ log2 P(actual byte) / count, count) over the rows in ``mask``; non-finite → :class:`NonFiniteError`."""
    count = int(mask.sum())
    if count == 0:
        return float("nan"), 0
    realised = logprobs.gather(1, actual.unsqueeze(1).to(logprobs.device)).squeeze(1)[mask].double()
    bad = ~torch.isfinite(realised)
    if bool(bad.any()):
        row = int(torch.nonzero(mask).squeeze(1)[bad][0])
        raise NonFiniteError(f"{who}: log P(byte) is {float(realised[bad][0])} at byte {row} of the data; "
                             "a defined row must give the realised byte a finite log-probability")
    return float(-realised.sum() / count / math.log(2)), count


# ------------------------------------------------------------------------------------------------------------
# Mixer
# ------------------------------------------------------------------------------------------------------------


def _prepare_mixer(mix: str | None, fit_data: Path | str | None, data: Path | str):
    """Build the mixer before any teacher loads, so a bad --mix or a missing --fit-data fails in a second."""
    if mix is None or mix.strip().lower() == "none":
        return None, False
    from .mix import build_mixer

    mixer = build_mixer(mix)
    needs_fit = getattr(mixer, "needs_fit", None)
    if needs_fit is None:
        needs_fit = mix.split(":", 1)[0].strip().lower() in LEARNED_MIXERS
    if needs_fit and fit_data is None:
        raise ConfigError(f"--mix {mix} learns its weights: pass --fit-data FILE, a different text than --data "
                          "(the mixer is never fit on the text it is scored on)")
    if fit_data is not None:
        fit, scored = Path(fit_data), Path(data)
        if fit.exists() and scored.exists() and os.path.samefile(fit, scored):
            raise ConfigError(f"--fit-data {fit} is the scored --data file; fit the mixer on a different text")
    return mixer, bool(needs_fit)


def _weights_by_name(described: dict, names: list[str]) -> dict[str, Any]:
    """The mixer's reported weights as ``{teacher: weight}`` (a list is read in teacher order)."""
    weights = described.get("weights") if isinstance(described, dict) else None
    if isinstance(weights, torch.Tensor):
        weights = weights.tolist()
    if isinstance(weights, (list, tuple)) and len(weights) == len(names):
        return {n: float(w) for n, w in zip(names, weights)}
    if isinstance(weights, dict):
        return {str(k): (float(v) if isinstance(v, (int, float, torch.Tensor)) else v) for k, v in weights.items()}
    return {} if weights is None else {"value": weights}


# ------------------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------------------


def split_teachers(teachers: str | Sequence[str]) -> list[str]:
    """``"a,b?max_length=512,c"`` or a list → spec strings (commas separate teachers; none inside a spec)."""
    items = teachers.split(",") if isinstance(teachers, str) else list(teachers)
    items = [t.strip() for t in items if t and t.strip()]
    if not items:
        raise ConfigError("--teachers is empty; give one or more teacher specs, e.g. smollm2-135m,gemma3-270m")
    return items


def score(teachers: str | Sequence[str], data: Path | str, *, fit_data: Path | str | None = None,
          mix: str | None = DEFAULT_MIX, max_bytes: int | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
          device: str | None = None, batch_size: int | None = None, byte_rule: str | None = None,
          progress: ScoreProgress | None = None, max_length: int | None = None) -> ScoreReport:
    """Score ``data`` under each teacher and under their mixture ``mix`` (None or "none": no mixture).

    Everything that can be checked without loading a teacher (names, options, installed files, the mixer, the
    data files) is checked first. ``device``/``batch_size``/``byte_rule``/``max_length`` are defaults for every
    teacher; options in a spec string win.
    """
    from .teachers import check_loadable, resolve_teacher
    from .teachers.adapter import one_at_a_time

    progress = progress or _Silent()
    overrides = {"device": device, "batch_size": batch_size, "byte_rule": byte_rule, "max_length": max_length}
    resolved = [resolve_teacher(s, overrides) for s in split_teachers(teachers)]
    names = [r.name for r in resolved]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"teacher(s) {', '.join(dupes)} listed twice in --teachers; list each once")
    for r in resolved:
        check_loadable(r)
    mixer, needs_fit = _prepare_mixer(mix, fit_data, data)  # data specs stay strings: mergekd.sources reads them
    texts = load_score_texts(data, chunk_bytes, max_bytes)
    # teachers run over the fit text only for a mixer that learns from it (a fixed mixer has nothing to fit)
    fit_texts = load_score_texts(fit_data, chunk_bytes, max_bytes) if (needs_fit and fit_data) else []
    actual = actual_bytes(texts)
    total = int(actual.numel())

    logprobs: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []
    fit_logprobs: list[torch.Tensor] = []
    fit_masks: list[torch.Tensor] = []
    partial: list[tuple] = []
    def announce(r) -> None:
        progress.message(f"loading teacher {r.name} ({r.spec.location_label()})")

    # the generator first: after the last teacher, zip asks it once more, which frees that teacher too
    for teacher, r in zip(one_at_a_time(resolved, before=announce), resolved):
        progress.start(f"{r.name}: scoring", total)
        start = time.perf_counter()
        targets = teacher.byte_targets(texts, progress=progress.advance)
        seconds = time.perf_counter() - start
        logprobs.append(torch.cat([t.logprobs for t in targets]))
        masks.append(torch.cat([t.mask for t in targets]))
        if fit_texts:
            progress.start(f"{r.name}: fit data", sum(len(t.encode("utf-8")) for t in fit_texts))
            fit_targets = teacher.byte_targets(fit_texts, progress=progress.advance)
            fit_logprobs.append(torch.cat([t.logprobs for t in fit_targets]))
            fit_masks.append(torch.cat([t.mask for t in fit_targets]))
        partial.append((r.name, teacher.family, len(teacher.vocab), teacher.load_seconds, seconds))

    common = torch.stack(masks).all(0)
    report = ScoreReport(data=str(data), bytes=total, chunks=len(texts), common_bytes=int(common.sum()))
    for (name, family, vocab_size, load_s, score_s), lp, mask in zip(partial, logprobs, masks):
        bpb, count = realised_byte_bpb(lp, mask, actual, f"teacher {name!r}")
        bpb_common, _ = realised_byte_bpb(lp, common, actual, f"teacher {name!r}")
        report.teachers.append(TeacherScore(name=name, family=family, vocab_size=vocab_size, bpb=bpb,
                                            bytes_scored=count, bpb_common=bpb_common,
                                            load_seconds=round(load_s, 3), score_seconds=round(score_s, 3)))
    if mixer is not None:
        progress.message(f"mixing with {mix}")
        report.mixture = _score_mixture(mixer, str(mix), names, texts, logprobs, masks, actual, fit_texts,
                                        fit_logprobs, fit_masks)
    return report


def _score_mixture(mixer, mix: str, names: list[str], texts: list[str], logprobs, masks, actual, fit_texts,
                   fit_logprobs, fit_masks) -> MixtureScore:
    stacked, stacked_masks = torch.stack(logprobs), torch.stack(masks)
    fit_bytes = 0
    if fit_texts:
        fit_actual = actual_bytes(fit_texts)
        fit_bytes = int(fit_actual.numel())
        mixer.fit(torch.stack(fit_logprobs), torch.stack(fit_masks), fit_actual, teacher_names=names)
    elif not getattr(mixer, "needs_fit", False):
        # the mixer contract: fit() of a fixed mixer learns nothing, it only binds the teacher names (so the
        # reported weights are keyed by teacher); learned mixers never reach this line without fit data
        mixer.fit(stacked, stacked_masks, actual, teacher_names=names)
    mixed_rows, mixed_masks = [], []
    start = 0
    for text in texts:  # one chunk at a time: sequence-level mixers (min-ce, softmax-ce) weight per text
        end = start + len(text.encode("utf-8"))
        m, mm = mixer(stacked[:, start:end], stacked_masks[:, start:end], actual=actual[start:end])
        mixed_rows.append(m.gather(1, actual[start:end].unsqueeze(1).to(m.device)).squeeze(1).cpu())
        mixed_masks.append(mm.cpu())
        start = end
    realised = torch.cat(mixed_rows).unsqueeze(1)  # [N, 1]: log P(actual) is all the BPB needs
    mask = torch.cat(mixed_masks)
    bpb, count = realised_byte_bpb(realised, mask, torch.zeros_like(actual), f"mixture {mix!r}")
    described = mixer.describe() if hasattr(mixer, "describe") else {}
    return MixtureScore(name=mix, bpb=bpb, bytes_scored=count, weights=_weights_by_name(described, names),
                        fit_bytes=fit_bytes)
