"""The student's own next-byte distribution, read from its token softmax: the "token-trie" view.

Why. The byte head only shapes the hidden state; what users keep (and what ``mergekd eval`` scores) is the token
softmax. The teachers' signal reaches the token softmax exactly through the student's own byte trie: at byte
offset k of the student token ``s`` predicted at position i, with ``p`` = the first k bytes of ``s``, the
student's token distribution P_i implies (the canonical-path rule the teachers' rows use)::

    Q(next byte = c) ∝ M(p·c),   M(q) = Σ P_i(v) over non-special tokens v whose bytes start with q
    Q(END)          ∝ Σ P_i(v) over tokens v whose bytes are exactly p    (the token stops after p)

k = 0 (p empty) is the distribution of the next token's first byte. Every byte of every student token thus gets
a full 256-way soft target on the *token* softmax: it moves mass between whole subtrees of the vocabulary the
way the teachers' next-byte beliefs say, which plain token CE (one-hot) cannot.

The END outcome and how the teachers' row maps onto it. A teacher row spreads over all 256 bytes; the student
can only continue ``p`` with bytes c for which some token starts with p·c ("supported"). A byte c that no token
continues can only follow p if the student's token stops after p and the next token starts with c, so its
teacher mass is moved to END (when some token equals p exactly; otherwise there is no way to produce it from
this position and the mass is dropped before renormalising). Supported bytes keep their teacher mass, i.e. the
continuation is credited to the longer token, as the canonical tokenization does. Both rows are built on the
same 257 outcomes, so any registered divergence (forward/reverse KL, JSD, temperature) applies unchanged.

Cost: the masses come from the same block segment tree as the teachers' conversion
(:func:`mergekd.bytes.convert.differentiable_child_masses`), sums of positive terms in float64, so a child of
mass 1e-30 next to a prefix of mass 0.5 keeps its value (a float32 prefix-sum difference would lose it).
"""

from __future__ import annotations

import numpy as np
import torch

from ..bytes import ByteTrieIndex, ByteVocab, trie_index_for
from ..bytes.convert import plan_edges, segment_offsets, differentiable_child_masses

UNSUPPORTED_LOGPROB = -1e4  # finite stand-in for log 0 on outcomes the student cannot produce (0·(−inf) = NaN)


class StudentByteRows:
    """Token-softmax → next-byte rows for one student vocabulary (built once; moved to the training device)."""

    def __init__(self, index: ByteTrieIndex, exact_ptr: torch.Tensor, exact_ids: torch.Tensor):
        self.index = index
        self.exact_ptr = exact_ptr  # [num_nodes + 1] CSR: node → token ids whose bytes are exactly the node
        self.exact_ids = exact_ids

    @classmethod
    def for_vocab(cls, vocab: ByteVocab, num_logits: int) -> "StudentByteRows":
        index = trie_index_for(vocab, num_logits, "cpu")
        return cls(index, *_exact_tokens(index, vocab.token_bytes, num_logits))

    def to(self, device) -> "StudentByteRows":
        if self.exact_ptr.device == torch.device(device):
            return self
        return StudentByteRows(self.index.to(device), self.exact_ptr.to(device), self.exact_ids.to(device))

    def logprobs(self, token_logprobs: torch.Tensor, row_pos: torch.Tensor, token_ids: torch.Tensor,
                 offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log Q [R, 257] float32 with column 256 = END, support [R, 257] bool) — differentiable.

        ``token_logprobs`` [P, V]: the student's log-softmax over its vocabulary at the positions that predict
        the tokens (any positive per-row scale works: rows are renormalised); row r reads position
        ``row_pos[r]`` at byte offset ``offsets[r]`` of token ``token_ids[r]``."""
        node = self.index.nodes_for(token_ids, offsets)  # the trie node of each row's prefix
        probs = token_logprobs.float().exp()
        plan = plan_edges(self.index, row_pos, node)
        children = differentiable_child_masses(self.index, probs, plan, node.numel())  # [R, 256] f64
        first = self.exact_ptr[node]
        owner, k = segment_offsets(self.exact_ptr[node + 1] - first)
        end = torch.zeros(node.numel(), dtype=torch.float64, device=node.device)
        end = end.index_add(0, owner, probs[row_pos[owner], self.exact_ids[first[owner] + k]].double())
        masses = torch.cat([children, end.unsqueeze(1)], 1)
        support = torch.zeros(node.numel(), 257, dtype=torch.bool, device=node.device)
        support[plan.edge_row, self.index.edge_byte[plan.edge]] = True  # the bytes some token continues with
        support[:, 256] = self.exact_ptr[node + 1] > first
        logq = torch.log(masses.clamp_min(1e-300)) - torch.log(masses.sum(1, keepdim=True).clamp_min(1e-300))
        logq = torch.where(support, logq, torch.full_like(logq, UNSUPPORTED_LOGPROB))
        return logq.float(), support


def teacher_rows_on_support(teacher_logprobs: torch.Tensor, support: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map teacher rows [R, 257] onto the student's outcomes (see module docstring) → (log-probs, usable [R]).

    Mass on bytes the student cannot continue with (and the teacher's own end-of-text) moves to END when END is
    supported, else it is dropped; the row is renormalised. ``usable`` is False for rows left with no mass."""
    p = teacher_logprobs.double().exp()
    child_ok = support[:, :256]
    spill = torch.where(child_ok, torch.zeros_like(p[:, :256]), p[:, :256]).sum(1) + p[:, 256]
    q = torch.cat([torch.where(child_ok, p[:, :256], torch.zeros_like(p[:, :256])),
                   torch.where(support[:, 256], spill, torch.zeros_like(spill)).unsqueeze(1)], 1)
    total = q.sum(1, keepdim=True)
    usable = total.squeeze(1) > 0
    logq = torch.log(q) - torch.log(total.clamp_min(1e-300))
    return logq.float(), usable


def _exact_tokens(index: ByteTrieIndex, token_bytes: list[bytes | None], num_logits: int):
    """CSR node → natural ids whose bytes equal the node's prefix, vectorised over the vocabulary.

    A token's own node is the child, along its last byte, of the node of its prefix of length len − 1 (the last
    entry of its path). Edges are sorted by (parent, byte), so one ``searchsorted`` finds every child at once."""
    ids = np.flatnonzero(np.asarray([bool(b) for b in token_bytes[:num_logits]]))
    last = np.asarray([token_bytes[i][-1] for i in ids], dtype=np.int64)
    path_ptr = index.path_ptr.numpy()
    parent = index.path_nodes.numpy()[path_ptr[ids + 1] - 1]
    edge_ptr = index.edge_ptr.numpy()
    edge_parent = np.repeat(np.arange(edge_ptr.size - 1), np.diff(edge_ptr))
    edge_key = edge_parent * 256 + index.edge_byte.numpy()
    edge = np.searchsorted(edge_key, parent * 256 + last)
    own = edge + 1  # child node c ↔ edge c − 1 (ByteTrieIndex.build)
    order = np.argsort(own, kind="stable")
    counts = np.bincount(own, minlength=index.num_nodes)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    return torch.as_tensor(ptr, dtype=torch.int64), torch.as_tensor(ids[order], dtype=torch.int64)
