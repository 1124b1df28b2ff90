"""Byte heads: predict the bytes of the student's next token from the hidden state that predicts that token.

Why: the teachers' knowledge arrives as next-byte distributions aligned to the text, while the student predicts
tokens of its own vocabulary. A byte head reads the student hidden state ``h_{i-1}`` (the one that predicts
student token ``s_i``) and predicts the bytes of ``s_i``; matching those predictions to the teachers' mixture
pushes byte-level knowledge into ``h_{i-1}``, and so into the student. The head is dropped at export.

* ``parallel`` — BLD (arXiv 2604.07466): K independent linear heads, one per byte offset 0..K−1 of the next
  token, all fed ``h_{i-1}`` only (one matmul). Offset k does not see bytes 0..k−1 of the token.
* ``recurrent`` — a small GRU byte decoder started from ``h_{i-1}`` and teacher-forced on the token's earlier
  bytes, so offset k conditions on bytes 0..k−1 exactly like the teachers' next-byte rows do.

Both output logits over 257 outcomes (256 bytes + end of text) to line up with the teachers' rows.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import Registry

BYTE_HEADS: Registry = Registry("byte heads", "mergekd.byte_heads")
NUM_OUTCOMES = 257


class ByteHead(nn.Module):
    """Base: ``forward(hidden [M, H], token_bytes [M, K] long) → logits [M, K, 257]``.

    ``token_bytes`` holds each next token's bytes (padded; only used by heads that condition on earlier bytes).
    ``config()`` returns the constructor arguments so a checkpoint can rebuild the head.
    """

    kind = "base"

    def __init__(self, hidden_size: int, num_offsets: int):
        super().__init__()
        if num_offsets < 1:
            raise ValueError("num_offsets must be ≥ 1")
        self.hidden_size = hidden_size
        self.num_offsets = num_offsets

    def config(self) -> dict:
        return {"kind": self.kind, "hidden_size": self.hidden_size, "num_offsets": self.num_offsets}


@BYTE_HEADS.register("parallel", aliases=("bld",))
class ParallelByteHead(ByteHead):
    """K linear heads over ``h_{i-1}``, computed as one [H, K·257] matmul."""

    kind = "parallel"

    def __init__(self, hidden_size: int, num_offsets: int = 10):
        super().__init__(hidden_size, num_offsets)
        self.proj = nn.Linear(hidden_size, num_offsets * NUM_OUTCOMES)
        nn.init.normal_(self.proj.weight, std=hidden_size ** -0.5 * 0.1)
        nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor, token_bytes: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(hidden).view(hidden.shape[0], self.num_offsets, NUM_OUTCOMES)


@BYTE_HEADS.register("recurrent", aliases=("gru", "autoregressive"))
class RecurrentByteHead(ByteHead):
    """A GRU over the token's bytes, started from ``h_{i-1}`` and teacher-forced (offset k sees bytes < k)."""

    kind = "recurrent"

    def __init__(self, hidden_size: int, num_offsets: int = 10, width: int = 256):
        super().__init__(hidden_size, num_offsets)
        self.width = width
        self.start = nn.Linear(hidden_size, width)
        self.embed = nn.Embedding(NUM_OUTCOMES + 1, width)  # 256 bytes, end, and a start symbol (257)
        self.gru = nn.GRU(width, width, batch_first=True)
        self.out = nn.Linear(width, NUM_OUTCOMES)

    def config(self) -> dict:
        return {**super().config(), "width": self.width}

    def forward(self, hidden: torch.Tensor, token_bytes: torch.Tensor | None = None) -> torch.Tensor:
        if token_bytes is None:
            raise ValueError("the recurrent byte head needs the next token's bytes (teacher forcing)")
        m = hidden.shape[0]
        start = torch.full((m, 1), NUM_OUTCOMES, dtype=torch.long, device=hidden.device)
        inputs = torch.cat([start, token_bytes[:, : self.num_offsets - 1].clamp(0, NUM_OUTCOMES - 1)], 1)
        h0 = torch.tanh(self.start(hidden)).unsqueeze(0)
        states, _ = self.gru(self.embed(inputs), h0.contiguous())
        return self.out(states)


def build_byte_head(kind: str, hidden_size: int, num_offsets: int = 10, **kwargs) -> ByteHead:
    """Byte head by registered name (``parallel``/``bld``, ``recurrent``/``gru``) or a plugin's name."""
    cls = BYTE_HEADS.get(kind)
    return cls(hidden_size=hidden_size, num_offsets=num_offsets, **kwargs)


def byte_head_from_config(config: dict) -> ByteHead:
    config = dict(config)
    return build_byte_head(config.pop("kind"), **config)
