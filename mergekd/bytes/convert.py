"""Next-token logits → next-byte log-probabilities under the canonical-path rule (the hot path).

Rule (documented in docs/byte-rule.md): for a byte inside teacher token ``u`` after its prefix ``p``
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

from dataclasses import dataclass

import torch

from ..errors import NonFiniteError
from .trie import ByteTrieIndex

END = 256  # column of the end-of-text outcome
# Below this (probabilities relative to the top token ~1) a float32 sum can be dominated by denormals: 262,144
# tokens × 1.2e-38 ≈ 3e-33, i.e. < 1e-7 relative to 1e-25.
FLOAT32_SAFE_MASS = 1e-25
NUM_OUTCOMES = 257


def segment_offsets(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For counts [R] → (owner [Σcounts], position-within-owner [Σcounts]), without a Python loop."""
    total = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts, output_size=total)
    starts = torch.cumsum(counts, 0) - counts
    within = torch.arange(total, device=counts.device) - starts[owner]
    return owner, within


def _softmax_into(logits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """softmax(logits) written into a reused buffer: 4-5x faster on CPU than allocating (page faults) each time."""
    try:
        return torch.ops.aten._softmax.out(logits, -1, False, out=out)
    except (RuntimeError, AttributeError):  # pragma: no cover - backends without the out= variant
        out.copy_(torch.softmax(logits, dim=-1))
        return out


def _block_tree(index: ByteTrieIndex, probs: torch.Tensor) -> torch.Tensor:
    """[P, 2·tree_size] float64 segment tree of block sums (node 1 = the row total)."""
    num_pos = probs.shape[0]
    block_sums = torch.zeros(num_pos, index.num_blocks + 1, dtype=probs.dtype, device=probs.device)
    block_sums.index_add_(1, index.block_of_token[: probs.shape[1]], probs)
    size = index.tree_size
    tree = torch.zeros(num_pos, 2 * size, dtype=torch.float64, device=probs.device)
    tree[:, size:size + index.num_blocks] = block_sums[:, : index.num_blocks]
    level = size // 2
    while level >= 1:  # pairwise sums, one level at a time (log2 of the block count)
        tree[:, level:2 * level] = tree[:, 2 * level:4 * level:2] + tree[:, 2 * level + 1:4 * level:2]
        level //= 2
    return tree


@dataclass
class EdgePlan:
    """Which tree nodes and direct vocabulary elements sum to each (row, child edge) — all sorted by position."""

    edge_row: torch.Tensor  # [E] row of each expanded edge
    edge: torch.Tensor  # [E] edge id (index into ByteTrieIndex.edge_*)
    cover_edge: torch.Tensor  # [C] expanded edge of each segment-tree node term
    cover_node: torch.Tensor  # [C] segment-tree node
    cover_pos: torch.Tensor  # [C] logits row it reads
    elem_edge: torch.Tensor  # [N] expanded edge of each direct term
    elem_id: torch.Tensor  # [N] natural token id
    elem_pos: torch.Tensor  # [N] logits row it reads


def plan_edges(index: ByteTrieIndex, row_pos: torch.Tensor, row_node: torch.Tensor) -> EdgePlan:
    """Expand rows → child edges → (tree cover nodes, direct elements), vectorised (no loop over rows)."""
    first = index.edge_ptr[row_node]
    edge_row, within = segment_offsets(index.edge_ptr[row_node + 1] - first)
    edge = first[edge_row] + within
    edge_pos = row_pos[edge_row]
    t0 = index.edge_tree_ptr[edge]
    cover_edge, cover_k = segment_offsets(index.edge_tree_ptr[edge + 1] - t0)
    cover_node = index.edge_tree_nodes[t0[cover_edge] + cover_k]
    part = index.edge_part[edge]  # [E, 4] = (a1, b1, a2, b2) rank ranges
    n1 = part[:, 1] - part[:, 0]
    elem_edge, elem_k = segment_offsets(n1 + part[:, 3] - part[:, 2])
    first_range = elem_k < n1[elem_edge]
    rank = torch.where(first_range, part[elem_edge, 0] + elem_k, part[elem_edge, 2] + elem_k - n1[elem_edge])
    return EdgePlan(edge_row, edge, cover_edge, cover_node, edge_pos[cover_edge], elem_edge,
                     index.sorted_ids[rank], edge_pos[elem_edge])


def _scatter_masses(index: ByteTrieIndex, plan: EdgePlan, cover_val: torch.Tensor, elem_val: torch.Tensor,
                    num_rows: int) -> torch.Tensor:
    """Sum the cover and direct terms per edge and lay the edges out as [rows, 256] masses (out of place)."""
    mass = torch.zeros(plan.edge.numel(), dtype=torch.float64, device=cover_val.device)
    mass = mass.index_add(0, plan.cover_edge, cover_val).index_add(0, plan.elem_edge, elem_val)
    out = torch.zeros(num_rows, 256, dtype=torch.float64, device=cover_val.device)
    return out.index_put((plan.edge_row, index.edge_byte[plan.edge]), mass)


def child_masses(index: ByteTrieIndex, logits: torch.Tensor, row_pos: torch.Tensor, row_node: torch.Tensor,
                 *, probs_dtype: torch.dtype = torch.float32, max_elements: int = 1 << 23,
                 inputs_are_probs: bool = False) -> torch.Tensor:
    """Masses ``M(p·c)`` for c in 0..255 of each row's trie node under softmax(logits[row_pos]) → [R, 256] f64.

    ``row_pos`` must be sorted. Work is split into chunks of ≤ ``max_elements`` logits that reuse one softmax
    buffer; every other tensor is O(rows + edges). With ``inputs_are_probs`` the first argument already holds
    probabilities (any positive per-row scale) and is used as is. Not differentiable (buffers are reused); the
    student's side uses :func:`differentiable_child_masses`.
    """
    device = logits.device
    num_pos, width = logits.shape
    plan = plan_edges(index, row_pos, row_node)
    cover_val = torch.empty(plan.cover_node.numel(), dtype=torch.float64, device=device)
    elem_val = torch.empty(plan.elem_id.numel(), dtype=torch.float64, device=device)
    chunk = max(1, max_elements // max(1, width))
    buf = None if inputs_are_probs else torch.empty(min(chunk, num_pos), width, dtype=probs_dtype, device=device)
    bounds = torch.arange(0, num_pos + chunk, chunk, device=device).clamp(max=num_pos)
    c_bounds = torch.searchsorted(plan.cover_pos, bounds).tolist()
    e_bounds = torch.searchsorted(plan.elem_pos, bounds).tolist()
    for i, p0 in enumerate(bounds[:-1].tolist()):  # loop over memory chunks, not over positions
        p1 = min(p0 + chunk, num_pos)
        if inputs_are_probs:
            probs = logits[p0:p1]
        else:
            probs = _softmax_into(logits[p0:p1].to(probs_dtype), buf[: p1 - p0])
        tree = _block_tree(index, probs)
        if not torch.isfinite(tree[:, 1]).all():
            raise NonFiniteError("teacher logits contain NaN or +inf (or a row of -inf); refusing to build "
                                 "byte targets from them")
        c0, c1 = c_bounds[i], c_bounds[i + 1]
        cover_val[c0:c1] = tree[plan.cover_pos[c0:c1] - p0, plan.cover_node[c0:c1]]
        e0, e1 = e_bounds[i], e_bounds[i + 1]
        elem_val[e0:e1] = probs[plan.elem_pos[e0:e1] - p0, plan.elem_id[e0:e1]].to(torch.float64)
    return _scatter_masses(index, plan, cover_val, elem_val, row_node.numel())


def differentiable_child_masses(index: ByteTrieIndex, probs: torch.Tensor, plan: EdgePlan,
                                num_rows: int) -> torch.Tensor:
    """:func:`child_masses` for probabilities that need gradients (the student's own token softmax).

    Same block tree and edge plan (``plan = plan_edges(index, row_pos, row_node)``, which the caller also uses
    for the rows' support), built out of place in one piece (student batches are small enough), so autograd
    sees every step. Block sums are taken in the input dtype (≤ ``block_size`` terms each), the tree and the
    edge sums in float64: every mass is a sum of positive terms, never a difference.
    """
    blocks = torch.zeros(probs.shape[0], index.num_blocks + 1, dtype=probs.dtype, device=probs.device)
    blocks = blocks.index_add(1, index.block_of_token[: probs.shape[1]], probs)[:, : index.num_blocks]
    level = torch.nn.functional.pad(blocks.double(), (0, index.tree_size - index.num_blocks))
    levels = [level]
    while level.shape[1] > 1:  # pairwise sums, one level at a time
        level = level[:, 0::2] + level[:, 1::2]
        levels.append(level)
    # node 0 unused, node 1 = root, nodes [w, 2w) = the level of width w — the layout of _block_tree
    tree = torch.cat([torch.zeros_like(level)] + levels[::-1], 1)
    cover_val = tree[plan.cover_pos, plan.cover_node]
    elem_val = probs[plan.elem_pos, plan.elem_id].double()
    return _scatter_masses(index, plan, cover_val, elem_val, num_rows)


def _normalise(masses: torch.Tensor) -> torch.Tensor:
    """[R, 256] masses → [R, 257] float64 log-probs (end column −inf)."""
    total = masses.sum(1, keepdim=True)
    logp = torch.log(masses) - torch.log(total)
    end = torch.full_like(logp[:, :1], float("-inf"))
    return torch.cat([logp, end], 1)


def byte_logprobs_from_logits(index: ByteTrieIndex, logits: torch.Tensor, row_pos: torch.Tensor,
                              row_node: torch.Tensor, row_byte: torch.Tensor | None = None,
                              max_elements: int = 1 << 23) -> torch.Tensor:
    """Next-byte log-probs [R, 257] (float32) for rows (position, trie node) given next-token logits [P, V].

    ``row_byte`` (optional) is the byte that actually follows; rows where that byte's mass is below
    FLOAT32_SAFE_MASS in float32 (or the node's mass is) are recomputed from float64 probabilities. Positions
    are processed in chunks of at most ``max_elements`` logits, so memory stays bounded for 262k vocabularies.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be [positions, vocab], got shape {tuple(logits.shape)}")
    if logits.shape[1] > index.num_logits:
        raise ValueError(f"logits have {logits.shape[1]} columns but the index covers {index.num_logits}")
    if row_node.numel() == 0:
        return torch.empty(0, NUM_OUTCOMES, dtype=torch.float32, device=logits.device)
    order = torch.argsort(row_pos, stable=True)
    pos, node = row_pos[order], row_node[order]
    masses = child_masses(index, logits, pos, node, max_elements=max_elements)
    # float32 probabilities below ~1e-38 are denormal or zero: a node (or realised child) whose mass is
    # under FLOAT32_SAFE_MASS may be dominated by them, so those rows are redone from float64 probabilities
    bad = masses.sum(1) < FLOAT32_SAFE_MASS
    if row_byte is not None:
        real = row_byte[order].clamp(max=255)
        bad |= masses.gather(1, real.unsqueeze(1)).squeeze(1) < FLOAT32_SAFE_MASS
    if bad.any():
        uniq, inv = torch.unique(pos[bad], return_inverse=True)
        masses[bad] = child_masses(index, logits[uniq], inv, node[bad], probs_dtype=torch.float64,
                                   max_elements=max_elements)
    out = torch.empty(row_node.numel(), NUM_OUTCOMES, dtype=torch.float32, device=logits.device)
    out[order] = _normalise(masses).float()
    return out


def end_logprobs_from_logits(index: ByteTrieIndex, logits: torch.Tensor) -> torch.Tensor:
    """Distribution over (first byte of the next token, end of text) after the last byte: [P, 257].

    Column 256 is the mass of the end-of-sequence token(s); other specials are conditioned away.
    """
    probs = torch.softmax(logits.double(), dim=-1)
    root = torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device)
    masses = child_masses(index, probs, torch.arange(logits.shape[0], device=logits.device), root,
                          inputs_are_probs=True)
    eos = probs[:, index.eos_ids].sum(1, keepdim=True) if index.eos_ids.numel() else masses[:, :1] * 0
    full = torch.cat([masses, eos], 1)
    return (torch.log(full) - torch.log(full.sum(1, keepdim=True))).float()
