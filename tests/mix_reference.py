"""Slow float64 references for the mixers, written independently of mergekd.mix (plain loops over rows).

They use numpy and the formulas of mergekd/mix/README_SECTION.md, row by row, so a vectorisation or masking
bug in the package shows up as a mismatch. Undefined rows are returned as None.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def make_inputs(k: int, n: int, seed: int, *, absent: float = 0.15, impossible: float = 0.2, scale: float = 3.0):
    """Random teacher rows like the byte core's: log_softmax of random logits with some -inf outcomes, column 256
    (end of text) impossible on most rows, undefined rows filled with NaN; ``actual`` drawn from teacher 0 where
    it is defined (else uniformly among bytes teacher 1 allows)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(k, n, 257, generator=g, dtype=torch.float64) * scale
    logits[torch.rand(k, n, 257, generator=g) < impossible] = float("-inf")
    logits[:, torch.rand(n, generator=g) < 0.9, 256] = float("-inf")
    logits[..., 0] = torch.where(torch.isinf(logits).all(-1), 0.0, logits[..., 0])  # every row keeps some mass
    logprobs = torch.log_softmax(logits, -1).float()
    masks = torch.rand(k, n, generator=g) >= absent
    masks[:, : min(n, 3)] = True
    if n > 5:
        masks[:, 5] = False  # a row with no teacher at all
    logprobs[~masks] = float("nan")
    source = torch.where(masks[0], 0, masks.long().argmax(0))  # teacher 0, else the first defined one
    p = torch.nan_to_num(logprobs[source, torch.arange(n)].double().exp(), nan=1.0 / 257)
    actual = torch.multinomial(p, 1, generator=g).squeeze(1) if n else torch.zeros(0, dtype=torch.long)
    return logprobs, masks, actual


def _np(logprobs: torch.Tensor) -> np.ndarray:
    return logprobs.detach().double().numpy()


def _lse(v: np.ndarray) -> float:
    m = np.max(v)
    if m == -np.inf:
        return -np.inf
    return float(m + np.log(np.sum(np.exp(v - m))))


def _row_normalise(row: np.ndarray) -> np.ndarray:
    return row - _lse(row)


def linear_row(rows: list[np.ndarray], weights: list[float]) -> np.ndarray:
    total = sum(weights)
    p = np.zeros(257)
    for row, w in zip(rows, weights, strict=True):
        p += (w / total) * np.exp(_row_normalise(row))
    with np.errstate(divide="ignore"):
        return np.log(p)


def reference_linear(logprobs, masks, weights) -> list[np.ndarray | None]:
    lp, m = _np(logprobs), masks.numpy()
    out = []
    for n in range(lp.shape[1]):
        present = [k for k in range(lp.shape[0]) if m[k, n] and weights[k] > 0]
        out.append(linear_row([lp[k, n] for k in present], [weights[k] for k in present]) if present else None)
    return out


def reference_product(logprobs, masks, weights) -> list[np.ndarray | None]:
    lp, m = _np(logprobs), masks.numpy()
    out = []
    for n in range(lp.shape[1]):
        present = [k for k in range(lp.shape[0]) if m[k, n] and weights[k] > 0]
        if not present:
            out.append(None)
            continue
        total = sum(weights[k] for k in present)
        s = np.zeros(257)
        for k in present:
            s += (weights[k] / total) * _row_normalise(lp[k, n])
        if _lse(s) == -np.inf:  # disjoint supports: documented fallback to the linear pool
            out.append(linear_row([lp[k, n] for k in present], [weights[k] for k in present]))
        else:
            out.append(s - _lse(s))
    return out


def reference_sequence_ce(logprobs, masks, actual) -> list[float]:
    """Bits per byte of each teacher over the rows where all teachers present in the text are defined."""
    lp, m, a = _np(logprobs), masks.numpy(), actual.numpy()
    k_all, n_all = m.shape
    present = [k for k in range(k_all) if m[k].any()]
    common = [n for n in range(n_all) if all(m[k, n] for k in present)]
    ces = []
    for k in range(k_all):
        if k not in present:
            ces.append(math.inf)
            continue
        rows = common if common else [n for n in range(n_all) if m[k, n]]
        vals = [_row_normalise(lp[k, n])[a[n]] for n in rows]
        ces.append(-sum(vals) / len(vals) / math.log(2))
    return ces


def reference_min_ce(logprobs, masks, actual) -> list[np.ndarray | None]:
    ces = reference_sequence_ce(logprobs, masks, actual)
    order = sorted(range(len(ces)), key=lambda k: (ces[k], k))
    lp, m = _np(logprobs), masks.numpy()
    out = []
    for n in range(lp.shape[1]):
        chosen = next((k for k in order if m[k, n]), None)
        out.append(None if chosen is None else _row_normalise(lp[chosen, n]))
    return out


def reference_softmax_ce(logprobs, masks, actual, temperature: float) -> list[np.ndarray | None]:
    ces = reference_sequence_ce(logprobs, masks, actual)
    lp, m = _np(logprobs), masks.numpy()
    out = []
    for n in range(lp.shape[1]):
        present = [k for k in range(lp.shape[0]) if m[k, n]]
        if not present:
            out.append(None)
            continue
        finite = [k for k in present if math.isfinite(ces[k])]
        use = finite if finite else present
        best = min(ces[k] for k in use) if finite else 0.0
        weights = [math.exp(-(ces[k] - best) / temperature) if finite else 1.0 for k in use]
        out.append(linear_row([lp[k, n] for k in use], weights))
    return out


def assert_rows_match(mixed: torch.Tensor, mixed_mask: torch.Tensor, reference: list[np.ndarray | None],
                      atol: float = 2e-5) -> None:
    got = mixed.double().numpy()
    for n, ref in enumerate(reference):
        if ref is None:
            assert not bool(mixed_mask[n]), f"row {n} should be undefined"
            assert np.isnan(got[n]).all(), f"undefined row {n} should be NaN"
            continue
        assert bool(mixed_mask[n]), f"row {n} should be defined"
        assert np.array_equal(np.isneginf(got[n]), np.isneginf(ref)), f"row {n}: -inf pattern differs"
        finite = np.isfinite(ref)
        np.testing.assert_allclose(got[n][finite], ref[finite], atol=atol, rtol=1e-5, err_msg=f"row {n}")
