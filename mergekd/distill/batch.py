"""Student batches: token ids plus the exact byte rows the byte head is trained on.

For student token ``s_i`` (i ≥ 1) spanning text bytes [a, b), the hidden state at i−1 predicts ``s_i`` and,
through the byte head, its bytes at offsets k < min(K, b − a): target byte ``text[a + k]``, teacher row
``a + k`` of the mixture. Alignment uses byte offsets from ByteVocab (never decoded strings); a SentencePiece
dummy-prefix space at offset 0 of the first token is a byte of the token but not of the text, so it gets the
byte-CE target 0x20 and no teacher row.

Loss masks (``loss_from``): for prompt/response data and on-policy samples only the bytes from ``loss_from`` on
are learned. A byte-head row is supervised only at text bytes ≥ ``loss_from`` (byte CE and KL alike, so a teacher
row inside the prompt never reaches the loss). A token's CE counts when the token spells at least one such byte:
a token that straddles the prompt/response boundary is the student's only way to emit the first response
bytes, so dropping it would leave them untrained at the token level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..bytes import ByteVocab
from ..errors import ConfigError


@dataclass
class StudentBatch:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    target_ids: torch.Tensor  # [B, L] id predicted at each position (−100 = none)
    head_example: torch.Tensor  # [M] example of each byte-head row
    head_position: torch.Tensor  # [M] position (in its example) of the hidden state feeding the row
    head_bytes: torch.Tensor  # [M, K] bytes of the predicted token (0-padded)
    head_valid: torch.Tensor  # [M, K] offset k exists and is supervised
    head_text_row: torch.Tensor  # [M, K] row in the batch's concatenated teacher targets (−1 = none)
    num_examples: int

    def to(self, device) -> "StudentBatch":
        return StudentBatch(**{k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()})


def build_student_batch(vocab: ByteVocab, texts: list[str], num_offsets: int, max_tokens: int,
                        pad_id: int = 0, loss_from: list[int] | None = None) -> tuple[StudentBatch, torch.Tensor]:
    """(batch, text_row_offsets [B+1]) — offsets of each text's rows in the concatenated teacher targets.

    ``loss_from[e]``: UTF-8 byte offset in text e where the loss starts (None or 0: the whole text)."""
    aligns = [vocab.align(t) for t in texts]
    lengths = [int(a.token_ids.numel()) for a in aligns]
    if max(lengths) > max_tokens:
        raise ConfigError(f"a training text has {max(lengths)} student tokens but the student's context is "
                          f"{max_tokens}; lower seq_bytes")
    width = max(lengths)
    b = len(texts)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    targets = torch.full((b, width), -100, dtype=torch.long)
    offsets = torch.tensor([0] + [a.num_bytes for a in aligns]).cumsum(0)
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("ex", "pos", "bytes", "valid", "row")}
    k_range = torch.arange(num_offsets)
    for e, al in enumerate(aligns):  # loop over the texts of a batch; everything inside is vectorised
        n = lengths[e]
        input_ids[e, :n] = al.token_ids
        attention[e, :n] = 1
        spelled = al.token_len > 0
        predicted = spelled.clone()
        predicted[0] = False  # the first token has no predicting position
        first = loss_from[e] if loss_from is not None else 0
        if first > 0:  # only tokens that spell a byte at or after ``first``
            predicted &= (al.token_start + al.token_len) > first
        targets[e, : n - 1] = torch.where(predicted[1:], al.token_ids[1:], torch.full_like(al.token_ids[1:], -100))
        idx = torch.nonzero(predicted).squeeze(1)
        if idx.numel() == 0:
            continue
        text = torch.frombuffer(bytearray(al.text_bytes), dtype=torch.uint8).long()
        start = al.token_start[idx].unsqueeze(1) + k_range  # [m, K] text byte index of each offset
        valid = k_range < al.token_len[idx].unsqueeze(1)
        if first > 0:
            valid &= start >= first
        in_text = valid & (start >= 0)
        byte = torch.where(in_text, text[start.clamp(0, max(len(text) - 1, 0))], torch.full_like(start, 0x20))
        parts["ex"].append(torch.full((idx.numel(),), e, dtype=torch.long))
        parts["pos"].append(idx - 1)
        parts["bytes"].append(torch.where(valid, byte, torch.zeros_like(byte)))
        parts["valid"].append(valid)
        parts["row"].append(torch.where(in_text, start + offsets[e], torch.full_like(start, -1)))
    cat = {k: (torch.cat(v) if v else torch.zeros((0, num_offsets) if k in ("bytes", "valid", "row") else 0,
                                                      dtype=torch.bool if k == "valid" else torch.long))
           for k, v in parts.items()}
    batch = StudentBatch(input_ids, attention, targets, cat["ex"], cat["pos"], cat["bytes"], cat["valid"],
                         cat["row"], b)
    return batch, offsets
