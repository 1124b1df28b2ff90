"""ByteTrieIndex: the byte-sorted vocabulary as a trie of contiguous ranges, plus a block decomposition.

Why this shape. The canonical-path rule needs, at a byte inside token ``u`` after its prefix ``p``, the mass
``M(p·c)`` of every token whose bytes start with ``p·c``. Sort the (non-special) vocabulary by bytes: the
tokens under any prefix form a contiguous *range* of ranks, so every trie node is a range ``[lo, hi)`` and
its children split it into sub-ranges ordered by their next byte.

Summing a range with a float32 prefix sum over the whole vocabulary loses everything to cancellation (a range
of mass 1e-6 next to a token of mass 0.9), and a float64 prefix sum over V per position costs ~14 softmaxes.
Instead the sorted vocabulary is cut into *blocks* (≤ ``block_size`` ranks, aligned to the first-byte groups
and to large second-byte groups). One ``index_add_`` pass per position sums the probabilities into blocks in
the tokens' natural order (no gather, no sort at run time); a float64 segment tree over the few thousand
blocks is built by pairwise sums. Each trie edge (child range) is precomputed as "≤ 2·log2(blocks) tree nodes +
at most two short rank ranges at its ends", so its mass is a sum of positive terms only. (A prefix-sum
*difference*, even in float64, loses a child of mass 1e-27 next to a prefix of mass 0.5: the realised byte
would get log-probability −inf.)

Everything here is built once per vocabulary with numpy, looping over byte *depths* (≤ the longest token),
never over vocabulary entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class ByteTrieIndex:
    """Precomputed trie/range/block tables for one vocabulary (see module docstring). All tensors int64."""

    num_logits: int  # width of the logits this index accepts (≥ len(vocab))
    sorted_ids: torch.Tensor  # [V'] natural id at each rank
    block_of_token: torch.Tensor  # [num_logits] block of each natural id; excluded ids → dump block nb
    num_blocks: int
    path_ptr: torch.Tensor  # [num_logits+1] start of each natural id's path in path_nodes
    path_nodes: torch.Tensor  # [Σ len] node id of the prefix of length k of each token (k = 0 → root)
    edge_ptr: torch.Tensor  # [num_nodes+1] CSR over parent node → its child edges
    edge_byte: torch.Tensor  # [E] next byte of each child
    tree_size: int  # leaves of the block segment tree (a power of two ≥ num_blocks)
    edge_tree_ptr: torch.Tensor  # [E+1] CSR: each edge's whole-block part as segment-tree nodes
    edge_tree_nodes: torch.Tensor  # [Σ] node indices into a [2·tree_size] segment tree
    edge_part: torch.Tensor  # [E, 4] rank ranges (a1, b1, a2, b2) summed directly
    eos_ids: torch.Tensor  # [n_eos] natural ids whose mass is "end of text" after the last byte

    @property
    def num_nodes(self) -> int:
        return int(self.edge_ptr.numel() - 1)

    def to(self, device: torch.device | str) -> "ByteTrieIndex":
        fields = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return ByteTrieIndex(**fields)

    # ---------------------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, token_bytes: list[bytes | None], num_logits: int | None = None, eos_ids=(),
              block_size: int = 32) -> "ByteTrieIndex":
        num_logits = max(num_logits or len(token_bytes), len(token_bytes))
        included = [i for i, b in enumerate(token_bytes) if b]
        included.sort(key=lambda i: token_bytes[i])  # C-level sort of bytes keys: build time only
        n = len(included)
        if n == 0:
            raise ValueError("vocabulary has no token that spells text")
        sorted_ids = np.asarray(included, dtype=np.int64)
        lens = np.fromiter((len(token_bytes[i]) for i in included), dtype=np.int64, count=n)
        max_len = int(lens.max())
        # padded byte matrix in rank order (build-time only; max_len is the longest token, typically ≤ 128)
        flat = np.frombuffer(b"".join(token_bytes[i] for i in included), dtype=np.uint8).astype(np.int16)
        rank_ptr = np.concatenate([[0], np.cumsum(lens)])
        col = np.arange(flat.size) - np.repeat(rank_ptr[:-1], lens)
        mat = np.full((n, max_len), -1, dtype=np.int16)
        mat[np.repeat(np.arange(n), lens), col] = flat
        # longest common prefix with the previous rank
        differs = mat[1:] != mat[:-1]
        differs |= (np.arange(max_len)[None, :] >= np.minimum(lens[1:], lens[:-1])[:, None])
        lcp = np.zeros(n, dtype=np.int64)
        lcp[1:] = np.where(differs.any(1), differs.argmax(1), max_len)

        # nodes, depth by depth: node (depth d) starts at rank r iff len_r ≥ d and lcp_r < d
        path_nodes = np.zeros(int(rank_ptr[-1]), dtype=np.int64)  # depth-0 entries stay 0 (root)
        node_lo = [np.zeros(1, np.int64)]
        node_hi = [np.full(1, n, np.int64)]
        parents = [np.zeros(0, np.int64)]
        bytes_ = [np.zeros(0, np.int64)]
        prev_ids = np.zeros(n, dtype=np.int64)  # node id of each rank's prefix at depth d-1
        next_id = 1
        for d in range(1, max_len + 1):
            has = lens >= d
            new = has & (lcp < d)
            starts = np.flatnonzero(new)
            boundaries = np.flatnonzero(~has | new)
            ends = np.append(boundaries, n)[np.searchsorted(boundaries, starts, side="right")]
            ids_here = np.where(has, next_id + np.cumsum(new) - 1, -1)
            node_lo.append(starts)
            node_hi.append(ends)
            parents.append(prev_ids[starts])
            bytes_.append(mat[starts, d - 1].astype(np.int64))
            # the prefix of length d is a path entry for ranks with len > d (rows use prefixes 0..len-1)
            longer = np.flatnonzero(lens > d)
            path_nodes[rank_ptr[longer] + d] = ids_here[longer]
            prev_ids = ids_here
            next_id += starts.size
        lo = np.concatenate(node_lo)
        hi = np.concatenate(node_hi)
        edge_parent = np.concatenate(parents)  # child node c (id ≥ 1) ↔ edge c-1; non-decreasing parents
        edge_byte = np.concatenate(bytes_)
        edge_lo, edge_hi = lo[1:], hi[1:]
        num_nodes = lo.size
        edge_ptr = np.searchsorted(edge_parent, np.arange(num_nodes + 1), side="left")

        # blocks: aligned to depth-1 ranges and to depth-2 ranges at least one block long, else every block_size
        depth = np.repeat(np.arange(len(node_lo)), [a.size for a in node_lo])
        big = (depth == 1) | ((depth == 2) & (hi - lo >= block_size))
        forced = np.unique(np.concatenate([[0, n], lo[big], hi[big]]))
        seg_len = np.diff(forced)
        per_seg = -(-seg_len // block_size)
        seg_of_block = np.repeat(np.arange(seg_len.size), per_seg)
        k_in_seg = np.arange(per_seg.sum()) - np.repeat(np.cumsum(per_seg) - per_seg, per_seg)
        block_start = np.append(forced[:-1][seg_of_block] + k_in_seg * block_size, n)
        num_blocks = block_start.size - 1
        block_of_rank = np.searchsorted(block_start, np.arange(n), side="right") - 1
        block_of_token = np.full(num_logits, num_blocks, dtype=np.int64)
        block_of_token[sorted_ids] = block_of_rank

        # edges as whole blocks + ≤ 2 short direct ranges
        b_lo = np.searchsorted(block_start, edge_lo, side="right") - 1
        first_full = np.where(block_start[b_lo] == edge_lo, b_lo, b_lo + 1)
        b_hi = np.searchsorted(block_start, edge_hi, side="right") - 1  # block containing hi (nb when hi == n)
        has_full = first_full < b_hi
        blo = np.where(has_full, first_full, 0)
        bhi = np.where(has_full, b_hi, 0)
        tree_size, tree_ptr, tree_nodes = _segment_tree_cover(blo, bhi, num_blocks)
        a1 = edge_lo
        b1 = np.where(has_full, block_start[np.minimum(first_full, num_blocks)], edge_hi)
        a2 = np.where(has_full, block_start[np.minimum(b_hi, num_blocks)], 0)
        b2 = np.where(has_full, edge_hi, 0)

        # paths in natural-id order
        path_len = np.zeros(num_logits, dtype=np.int64)
        path_len[sorted_ids] = lens
        path_ptr = np.concatenate([[0], np.cumsum(path_len)])
        ranks = np.argsort(sorted_ids, kind="stable")  # rank of each included id, in increasing natural id
        rl = lens[ranks]
        src = np.repeat(rank_ptr[ranks], rl) + (np.arange(int(rank_ptr[-1])) - np.repeat(np.cumsum(rl) - rl, rl))
        path_nodes_nat = path_nodes[src]

        t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.int64)  # noqa: E731
        return cls(
            num_logits=num_logits,
            sorted_ids=t(sorted_ids),
            block_of_token=t(block_of_token),
            num_blocks=int(num_blocks),
            path_ptr=t(path_ptr),
            path_nodes=t(path_nodes_nat),
            edge_ptr=t(edge_ptr),
            edge_byte=t(edge_byte),
            tree_size=int(tree_size),
            edge_tree_ptr=t(tree_ptr),
            edge_tree_nodes=t(tree_nodes),
            edge_part=t(np.stack([a1, b1, a2, b2], 1)),
            eos_ids=t(np.asarray([i for i in eos_ids if i < num_logits], dtype=np.int64)),
        )

    # ---------------------------------------------------------------------------------------------------------
    def nodes_for(self, token_ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Trie node of the prefix of length ``offsets[i]`` of token ``token_ids[i]`` (vectorised)."""
        return self.path_nodes[self.path_ptr[token_ids] + offsets]


def _segment_tree_cover(lo: np.ndarray, hi: np.ndarray, num_leaves: int):
    """Canonical segment-tree cover of every range [lo, hi) of leaves, vectorised over ranges.

    Returns (tree_size, ptr [R+1], nodes): range r is the disjoint union of tree nodes nodes[ptr[r]:ptr[r+1]],
    in a bottom-up tree whose leaves sit at indices tree_size..tree_size+num_leaves-1 and node i = 2i + 2i+1.
    """
    size = 1
    while size < max(1, num_leaves):
        size *= 2
    left, right = lo + size, hi + size
    owners, nodes = [], []
    live = np.flatnonzero(left < right)
    while live.size:
        l, r = left[live], right[live]
        take_l = (l & 1) == 1
        owners.append(live[take_l]); nodes.append(l[take_l])
        l = l + take_l
        take_r = (r & 1) == 1
        r = r - take_r
        owners.append(live[take_r]); nodes.append(r[take_r])
        left[live], right[live] = l >> 1, r >> 1
        live = live[(l >> 1) < (r >> 1)]
    owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    node = np.concatenate(nodes) if nodes else np.zeros(0, np.int64)
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=lo.size)
    return size, np.concatenate([[0], np.cumsum(counts)]), node[order]
