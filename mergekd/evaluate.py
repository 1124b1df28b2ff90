"""Bits per byte of any causal LM on a text file, from its own token NLL — comparable across tokenizers.

BPB = Σ token NLL / Σ bytes of those tokens / ln 2, over every token that has a predicting position (a first
token without BOS is excluded from both sums; a SentencePiece dummy-prefix space is not a text byte). Texts are
cut into chunks of ``chunk_bytes`` that are scored independently, so every model sees the same contexts.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .bytes import byte_vocab_for


def token_nll_bpb(model, tokenizer, texts: list[str], *, batch_size: int = 4, progress=None) -> dict:
    """{"bpb": x, "bytes": n, "tokens": t} of ``model`` over ``texts``."""
    vocab = byte_vocab_for(tokenizer)
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    nll_total, byte_total, token_total = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b0 in range(0, len(texts), batch_size):
                aligns = [vocab.align(t) for t in texts[b0:b0 + batch_size]]
                width = max(int(a.token_ids.numel()) for a in aligns)
                ids = torch.full((len(aligns), width), pad, dtype=torch.long)
                attn = torch.zeros_like(ids)
                for r, a in enumerate(aligns):
                    ids[r, : a.token_ids.numel()] = a.token_ids
                    attn[r, : a.token_ids.numel()] = 1
                logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float()
                logp = torch.log_softmax(logits[:, :-1], -1)
                for r, a in enumerate(aligns):
                    n = a.token_ids.numel()
                    tgt = a.token_ids[1:].to(device)
                    nll = -logp[r, : n - 1].gather(1, tgt.unsqueeze(1)).squeeze(1)
                    text_bytes = (a.token_start[1:] + a.token_len[1:]).clamp(min=0) - a.token_start[1:].clamp(min=0)
                    counted = a.token_len[1:] > 0
                    nll_total += float(nll[counted.to(device)].double().sum())
                    byte_total += int(text_bytes[counted].sum())
                    token_total += int(counted.sum())
                if progress is not None:
                    progress(len(aligns))
    finally:
        model.train(was_training)
    return {"bpb": nll_total / max(byte_total, 1) / math.log(2), "bytes": byte_total, "tokens": token_total}


def evaluate_file(model, tokenizer, path: Path | str, chunk_bytes: int = 1024, limit_bytes: int | None = None,
                  progress=None) -> dict:
    """Token-NLL BPB of a held-out data source (a file or any spec of :mod:`mergekd.sources`), chunked in stream
    order; ``limit_bytes`` stops after the chunk that reaches that many bytes (as ``load_chunks`` does)."""
    return token_nll_bpb(model, tokenizer, held_out_chunks(path, chunk_bytes, limit_bytes), progress=progress)


def held_out_chunks(path: Path | str, chunk_bytes: int, limit_bytes: int | None = None) -> list[str]:
    """The chunks of a held-out source, in stream order (never shuffled; a spec's shuffle_buffer is ignored)."""
    from .sources import iter_indexed_chunks

    chunks, total = [], 0
    for _, chunk in iter_indexed_chunks(path, chunk_bytes, shuffle=False):
        chunks.append(chunk)
        total += len(chunk.encode("utf-8"))
        if limit_bytes is not None and total >= limit_bytes:
            break
    return chunks
