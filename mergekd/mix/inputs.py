"""Validation and float64 preparation of mixer inputs: the one gate every tensor passes before any mixing.

Why one place: every mixer makes the same assumptions (shapes, masks, finite values, normalised rows), and a
teacher bug that leaks NaN or un-normalised logits must stop here with a message naming the teacher and the
row, instead of surfacing later as a NaN loss in step 3,000 of a distillation run.

Conventions (the byte core's, see :mod:`mergekd.bytes.targets`):
    logprobs [K, N, 257]  natural-log next-byte distributions; -inf = impossible outcome
    masks    [K, N] bool  rows where teacher k is defined; other rows may hold anything (the byte core: NaN)
    actual   [N] long     the realised outcome of row n (byte 0..255, or 256 = end of text)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..bytes import NUM_OUTCOMES
from ..errors import ConfigError, MergekdError, NonFiniteError

NEG_INF = float("-inf")
LN2 = math.log(2.0)
# Rows are renormalised in float64 anyway; this only catches logits passed where log-probs belong
# (float32 log_softmax is off by ~1e-7; the byte core's conversion by far less than this).
NORMALISATION_TOLERANCE = 1e-2
# Rows per chunk when a whole fit set is scanned, so float64 temporaries stay ~100 MB whatever its size.
CHUNK_ROWS = 16384


class MixInputError(MergekdError, ValueError):
    """Mixer inputs have the wrong shape or type, or are not log-probabilities."""


class MixerNotFittedError(MergekdError, RuntimeError):
    """A data-driven mixer (learned, gated) was used before ``fit``."""


@dataclass
class MixInputs:
    """Validated inputs. ``logprobs`` is float64, each defined row renormalised, masked-out rows all -inf."""

    logprobs: torch.Tensor  # float64 [K, N, 257]
    masks: torch.Tensor  # bool [K, N]
    actual: torch.Tensor | None  # long [N]

    @property
    def num_teachers(self) -> int:
        return int(self.masks.shape[0])

    @property
    def num_rows(self) -> int:
        return int(self.masks.shape[1])


def check_shapes(logprobs: torch.Tensor, masks: torch.Tensor, actual: torch.Tensor | None = None) -> None:
    """Raise :class:`MixInputError` unless the tensors have the documented shapes and types."""
    if not isinstance(logprobs, torch.Tensor) or not isinstance(masks, torch.Tensor):
        raise MixInputError("logprobs and masks must be torch tensors ([K, N, 257] float and [K, N] bool)")
    if logprobs.dim() != 3 or logprobs.shape[-1] != NUM_OUTCOMES:
        raise MixInputError(f"logprobs must be [K, N, {NUM_OUTCOMES}] (teachers × rows × outcomes), "
                            f"got {tuple(logprobs.shape)}; stack the teachers' ByteTargets.logprobs")
    if not logprobs.is_floating_point():
        raise MixInputError(f"logprobs must be a float tensor, got {logprobs.dtype}")
    if logprobs.shape[0] < 1:
        raise MixInputError("logprobs has no teachers (K = 0); a mixer needs at least one teacher")
    if masks.dtype != torch.bool or tuple(masks.shape) != tuple(logprobs.shape[:2]):
        raise MixInputError(f"masks must be bool [K, N] = {tuple(logprobs.shape[:2])}, "
                            f"got {masks.dtype} {tuple(masks.shape)}")
    if actual is not None:
        if not isinstance(actual, torch.Tensor) or actual.dim() != 1 or actual.shape[0] != logprobs.shape[1]:
            shape = tuple(actual.shape) if isinstance(actual, torch.Tensor) else type(actual).__name__
            raise MixInputError(f"actual must be a [N] = [{logprobs.shape[1]}] integer tensor, got {shape}")
        if actual.is_floating_point() or actual.dtype == torch.bool:
            raise MixInputError(f"actual must hold integer outcomes 0..256, got dtype {actual.dtype}")
        if actual.numel() and (int(actual.min()) < 0 or int(actual.max()) >= NUM_OUTCOMES):
            raise MixInputError(f"actual must hold outcomes in 0..{NUM_OUTCOMES - 1} (256 = end of text), "
                                f"got values in [{int(actual.min())}, {int(actual.max())}]")


def _check_finite_rows(chunk: torch.Tensor, masks: torch.Tensor, row0: int, names: list[str] | None) -> torch.Tensor:
    """float64 row log-normalisers of a [K, R, 257] chunk; raises on NaN/+inf/empty/un-normalised defined rows."""
    def where(k: int, r: int) -> str:
        who = names[k] if names and k < len(names) else f"teacher {k}"
        return f"{who}, row {row0 + r}"

    bad = (torch.isnan(chunk) | (chunk == float("inf"))).any(-1) & masks
    if bool(bad.any()):
        k, r = (int(i) for i in bad.nonzero()[0])
        raise NonFiniteError(f"NaN or +inf log-probability at a defined row ({where(k, r)}); "
                             "the teacher's byte targets are corrupt (mask the row out if it is undefined)")
    lse = torch.logsumexp(chunk.double(), -1)
    empty = masks & (lse == NEG_INF)
    if bool(empty.any()):
        k, r = (int(i) for i in empty.nonzero()[0])
        raise NonFiniteError(f"a defined row gives every outcome probability 0 ({where(k, r)}); "
                             "mask the row out or fix the teacher's targets")
    off = masks & ((lse.abs() > NORMALISATION_TOLERANCE) | ~torch.isfinite(lse))
    if bool(off.any()):
        k, r = (int(i) for i in off.nonzero()[0])
        raise MixInputError(f"row is not a log-probability distribution ({where(k, r)}: logsumexp = "
                            f"{float(lse[k, r]):.4g}, expected 0); pass log_softmax outputs, not logits")
    return lse


def prepare(logprobs: torch.Tensor, masks: torch.Tensor, actual: torch.Tensor | None = None, *,
            teacher_names: list[str] | None = None) -> MixInputs:
    """Validate, then return float64 log-probs with defined rows renormalised and undefined rows all -inf.

    Renormalising in float64 makes every mixer's output exactly normalised even when a teacher's float32 rows
    are off by rounding, and the -inf fill means an undefined row can never leak NaN into a sum.
    """
    check_shapes(logprobs, masks, actual)
    masks = masks.to(logprobs.device)
    actual = None if actual is None else actual.to(logprobs.device)
    lse = _check_finite_rows(logprobs, masks, 0, teacher_names)
    lp = logprobs.double() - torch.where(masks, lse, 0.0).unsqueeze(-1)
    lp = torch.where(masks.unsqueeze(-1), lp, NEG_INF)
    return MixInputs(lp, masks, None if actual is None else actual.long())


def realised_logprobs(logprobs: torch.Tensor, masks: torch.Tensor, actual: torch.Tensor, *,
                      teacher_names: list[str] | None = None) -> torch.Tensor:
    """float64 [K, N]: log p_k(actual_n), renormalised like :func:`prepare`, -inf where teacher k is undefined.

    Works through the rows in chunks, so a large fit set never needs a float64 copy of [K, N, 257].
    """
    check_shapes(logprobs, masks, actual)
    masks, actual = masks.to(logprobs.device), actual.to(logprobs.device).long()
    out = torch.empty(masks.shape, dtype=torch.float64, device=logprobs.device)
    for r0 in range(0, masks.shape[1], CHUNK_ROWS):
        chunk = logprobs[:, r0:r0 + CHUNK_ROWS]
        m = masks[:, r0:r0 + CHUNK_ROWS]
        lse = _check_finite_rows(chunk, m, r0, teacher_names)
        idx = actual[r0:r0 + CHUNK_ROWS].view(1, -1, 1).expand(chunk.shape[0], -1, 1)
        picked = chunk.gather(-1, idx).squeeze(-1).double() - torch.where(m, lse, 0.0)
        out[:, r0:r0 + CHUNK_ROWS] = torch.where(m, picked, NEG_INF)
    return out


def require_actual(mixer_name: str, actual: torch.Tensor | None) -> None:
    if actual is None:
        raise ConfigError(f"mixer {mixer_name!r} weights teachers by their cross-entropy on the text, so it needs "
                          "the realised bytes: pass actual=<[N] long tensor of byte values> when calling it")
