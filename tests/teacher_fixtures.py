"""Tiny teachers for fast tests: random causal LMs saved with REAL tokenizers, and a tiny GGUF file.

Why on disk: the adapter's job is loading (``hf:FOLDER``, ``gguf:FILE``) as much as computing, so the tests go
through the same files and spec strings a user writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from conftest import tiny_causal_lm


def save_tiny_teacher(folder: Path, tokenizer, seed: int = 0, max_positions: int = 512,
                      logit_scale: float = 0.6) -> Path:
    """A 1-layer random Llama sized to ``tokenizer`` plus the tokenizer, as a ``save_pretrained`` folder."""
    model = tiny_causal_lm(len(tokenizer), seed=seed, logit_scale=logit_scale, max_positions=max_positions)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def lowercasing_tokenizer(gpt2):
    """GPT-2 with a Lowercase normaliser: a tokenizer that changes text, which mergekd must refuse. Built as a
    generic fast tokenizer so the normaliser survives ``save_pretrained`` (the GPT-2 class rebuilds its own)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(gpt2.backend_tokenizer.to_str())
    spec["normalizer"] = {"type": "Lowercase"}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), eos_token="<|endoftext|>")


def write_tiny_gguf(path: Path, seed: int = 0) -> Path:
    """A float32 1-layer Llama GGUF with a small byte-level BPE tokenizer (256 byte tokens, a few merges, an
    end-of-text token). transformers cannot write GGUF, so this uses the ``gguf`` package directly; loading it
    exercises the same dequantise → convert → cache path as the real GGUF teachers, in a second."""
    from gguf import GGUFWriter

    from mergekd.bytes.vocab import _byte_level_decoder

    byte_char = {b: c for c, b in _byte_level_decoder().items()}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("o", "n"), ("Ġ", "s")]
    tokens = [byte_char[b] for b in range(256)] + [a + b for a, b in merges] + ["<|endoftext|>"]
    vocab, hidden, ffn, heads = len(tokens), 32, 64, 2
    path.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(str(path), "llama")
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_block_count(1)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(hidden // heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (vocab - 1) + [3])
    w.add_token_merges([f"{a} {b}" for a, b in merges])
    w.add_bos_token_id(vocab - 1)
    w.add_eos_token_id(vocab - 1)
    w.add_add_bos_token(False)
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> np.ndarray:
        return (torch.randn(*shape, generator=gen) * 0.5).numpy().astype(np.float32)

    w.add_tensor("token_embd.weight", rand(vocab, hidden))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("output.weight", rand(vocab, hidden))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(hidden, np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(hidden, np.float32))
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        w.add_tensor(f"blk.0.{name}.weight", rand(hidden, hidden))
    w.add_tensor("blk.0.ffn_gate.weight", rand(ffn, hidden))
    w.add_tensor("blk.0.ffn_up.weight", rand(ffn, hidden))
    w.add_tensor("blk.0.ffn_down.weight", rand(hidden, ffn))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
