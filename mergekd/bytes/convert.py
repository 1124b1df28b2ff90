"""Next-token logits → next-byte log-probabilities under the canonical-path rule (the hot path).

Rule (documented in README "Byte targets"): for a byte inside teacher token ``u`` after its prefix ``p``
(``p`` includes a SentencePiece dummy-prefix space when the tokenizer inserted one), with ``P`` the teacher's
next-token distribution at the position that predicts ``u``::

    P(next byte = c) = M(p·c) / Σ_c' M(p·c'),    M(q) = Σ P(v) over non-special tokens v whose bytes start with q

Tokens whose bytes are exactly ``p`` are conditioned away: the canonical tokenization tells us the token went
on past ``p``. Special tokens never carry text mass. Column 256 (end of text) is 0 inside the text.

Cost per teacher position: one softmax and one ``index_add_`` over the vocabulary, a float64 segment tree over
~V/32 blocks, then O(children) work per byte row (see :mod:`mergekd.bytes.trie`). The same code runs on CPU and
CUDA. Rows whose masses underflow float32 (a realised token ~1e-38 below the top token) are redone in float64.
"""

from __future__ import annotations

import torch

from ..errors import NonFiniteError
from .trie import ByteTrieIndex

END = 256  # column of the end-of-text outcome
# Below this (probabilities relative to the top token ~1) a float32 sum can be dominated by denormals: 262,144
# tokens × 1.2e-38 ≈ 3e-33, i.e. < 1e-7 relative to 1e-25.
FLOAT32_SAFE_MASS = 1e-25
NUM_OUTCOMES = 257


def _segment_offsets(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For counts [R] → (owner [Σcounts], position-within-owner [Σcounts]), without a Python loop."""
    total = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts, output_size=total)
    starts = torch.cumsum(counts, 0) - counts
    within = torch.arange(total, device=counts.device) - starts[owner]
    return owner, within


def child_masses(index: ByteTrieIndex, probs: torch.Tensor, row_pos: torch.Tensor, row_node: torch.Tensor,
                 out_dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Unnormalised masses ``M(p·c)`` for c in 0..255 of each row's trie node → [R, 256] (float64).

    ``probs`` [P, V] are probabilities (any positive scale per row), ``row_pos`` [R] the probs row of each
    output row, ``row_node`` [R] its trie node.
    """
    device = probs.device
    num_pos = probs.shape[0]
    block_sums = torch.zeros(num_pos, index.num_blocks + 1, dtype=probs.dtype, device=device)
    block_sums.index_add_(1, index.block_of_token[: probs.shape[1]], probs)
    size = index.tree_size
    tree = torch.zeros(num_pos, 2 * size, dtype=torch.float64, device=device)
    tree[:, size:size + index.num_blocks] = block_sums[:, : index.num_blocks]
    level = size // 2
    while level >= 1:  # pairwise sums, one level at a time (log2 of the block count)
        tree[:, level:2 * level] = tree[:, 2 * level:4 * level:2] + tree[:, 2 * level + 1:4 * level:2]
        level //= 2

    first = index.edge_ptr[row_node]
    degree = index.edge_ptr[row_node + 1] - first
    edge_row, within = _segment_offsets(degree)
    edge = first[edge_row] + within
    pos = row_pos[edge_row]
    t0 = index.edge_tree_ptr[edge]
    cover_edge, cover_k = _segment_offsets(index.edge_tree_ptr[edge + 1] - t0)
    cover_values = tree[pos[cover_edge], index.edge_tree_nodes[t0[cover_edge] + cover_k]]
    mass = torch.zeros(edge.numel(), dtype=torch.float64, device=device).index_add_(0, cover_edge, cover_values)

    part = index.edge_part[edge]  # [E, 4] = (a1, b1, a2, b2) rank ranges
    n1 = part[:, 1] - part[:, 0]
    n2 = part[:, 3] - part[:, 2]
    elem_edge, elem_k = _segment_offsets(n1 + n2)
    first_range = elem_k < n1[elem_edge]
    rank = torch.where(first_range, part[elem_edge, 0] + elem_k, part[elem_edge, 2] + elem_k - n1[elem_edge])
    values = probs[pos[elem_edge], index.sorted_ids[rank]].to(torch.float64)
    mass = mass.index_add(0, elem_edge, values)

    out = torch.zeros(row_node.numel(), 256, dtype=out_dtype, device=device)
    out[edge_row, index.edge_byte[edge]] = mass.to(out_dtype)
    return out


def _normalise(masses: torch.Tensor) -> torch.Tensor:
    """[R, 256] masses → [R, 257] float64 log-probs (end column −inf)."""
    total = masses.sum(1, keepdim=True)
    logp = torch.log(masses) - torch.log(total)
    end = torch.full_like(logp[:, :1], float("-inf"))
    return torch.cat([logp, end], 1)


def byte_logprobs_from_logits(index: ByteTrieIndex, logits: torch.Tensor, row_pos: torch.Tensor,
                              row_node: torch.Tensor, row_byte: torch.Tensor | None = None,
                              max_elements: int = 1 << 26) -> torch.Tensor:
    """Next-byte log-probs [R, 257] (float32) for rows (position, trie node) given next-token logits [P, V].

    ``row_byte`` (optional) is the byte that actually follows; rows where that byte's mass underflowed to 0
    (or nearly, see FLOAT32_SAFE_MASS) in float32 are recomputed from float64 probabilities. Positions are processed in chunks of at most
    ``max_elements`` logits so memory stays bounded for 262k-token vocabularies.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [positions, vocab], got shape {tuple(logits.shape)}")
    if logits.shape[1] > index.num_logits:
        raise ValueError(f"logits have {logits.shape[1]} columns but the index covers {index.num_logits}")
    if torch.isnan(logits).any() or torch.isposinf(logits).any():
        raise NonFiniteError("teacher logits contain NaN or +inf; refusing to build byte targets from them")
    out = torch.empty(row_node.numel(), NUM_OUTCOMES, dtype=torch.float32, device=logits.device)
    if row_node.numel() == 0:
        return out
    chunk = max(1, max_elements // max(1, logits.shape[1]))
    # rows are grouped by position: split them at chunk boundaries of positions
    order = torch.argsort(row_pos, stable=True)
    sorted_pos = row_pos[order]
    for p0 in range(0, logits.shape[0], chunk):  # loop over memory chunks, not over positions
        p1 = min(p0 + chunk, logits.shape[0])
        lo = int(torch.searchsorted(sorted_pos, p0))
        hi = int(torch.searchsorted(sorted_pos, p1))
        if lo == hi:
            continue
        rows = order[lo:hi]
        probs = torch.softmax(logits[p0:p1].float(), dim=-1)
        masses = child_masses(index, probs, row_pos[rows] - p0, row_node[rows])
        # float32 probabilities below ~1e-38 are denormal or zero: a node (or realised child) whose mass is
        # under FLOAT32_SAFE_MASS may be dominated by them, so those rows are redone from float64 probabilities
        bad = masses.sum(1) < FLOAT32_SAFE_MASS
        if row_byte is not None:
            real = row_byte[rows]
            in_range = real < 256
            bad |= in_range & (masses.gather(1, real.clamp(max=255).unsqueeze(1)).squeeze(1) < FLOAT32_SAFE_MASS)
        logp = _normalise(masses)
        if bad.any():
            bad_rows = rows[bad]
            local = row_pos[bad_rows] - p0
            uniq, inv = torch.unique(local, return_inverse=True)
            probs64 = torch.softmax(logits[p0:p1][uniq].double(), dim=-1)
            logp[bad] = _normalise(child_masses(index, probs64, inv, row_node[bad_rows]))
        out[rows] = logp.float()
    return out


def end_logprobs_from_logits(index: ByteTrieIndex, logits: torch.Tensor) -> torch.Tensor:
    """Distribution over (first byte of the next token, end of text) after the last byte: [P, 257].

    Column 256 is the mass of the end-of-sequence token(s); other specials are conditioned away.
    """
    probs = torch.softmax(logits.double(), dim=-1)
    root = torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device)
    masses = child_masses(index, probs, torch.arange(logits.shape[0], device=logits.device), root)
    eos = probs[:, index.eos_ids].sum(1, keepdim=True) if index.eos_ids.numel() else masses[:, :1] * 0
    full = torch.cat([masses, eos], 1)
    return (torch.log(full) - torch.log(full.sum(1, keepdim=True))).float()
