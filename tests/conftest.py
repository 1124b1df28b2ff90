"""Shared fixtures: real offline tokenizers, tiny random causal LMs built on the fly, adversarial texts."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

REAL_TOKENIZERS = ["gpt2", "qwen2.5", "cl100k", "mistral-v1", "mistral-v3", "smollm2", "gemma3"]

# DESIGN.md's adversarial set (without U+2581, which SentencePiece-style vocabularies cannot spell).
ADVERSARIAL = [
    "a",
    " ",
    "  leading spaces",
    "trailing spaces   ",
    "repeated    inner     spaces",
    "tabs\tand\ttabs\t\t",
    "windows\r\nline\r\nendings\r\n",
    "paragraph\n\nbreak\n\n\n",
    "digits 0123456789 and a long number 3141592653589793238462643383279502884197",
    "日本語のテキストと中文文本",
    "مرحبا بالعالم שלום עולם",
    "combining e\u0301 a\u0300 n\u0303 vs é à ñ",
    "emoji 👩‍👩‍👧‍👦 👍🏽 🧑🏿‍🚀",
    "flags 🇫🇷🇯🇵🇺🇸",
    "control \x00\x01\x07\x1b[0m bytes",
    "replacement \ufffd char",
    "Pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
    "def f(x):\n    if x:\n        return [i ** 2 for i in range(x)]\n\treturn None\n",
    "special strings <|endoftext|> <s> </s> <bos> <eos> <|im_start|> [INST] as plain text",
]


@pytest.fixture
def one_thread():
    """Small-tensor tests (mixers): one intra-op thread is faster, and on a loaded machine much faster (2 threads
    spin-wait on each other: a 0.1 s fit took 3.5 s here with 2 threads while other processes ran)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tokenizers():
    """Lazily loaded real tokenizers by name (cached for the session)."""
    from mergekd.assets import load_tokenizer

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_tokenizer(name)
        return cache[name]

    return get


def tiny_causal_lm(vocab_size: int, seed: int = 0, logit_scale: float = 1.0, max_positions: int = 512):
    """A random 1-layer Llama with the given vocabulary; ``logit_scale`` sharpens its distributions."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=max_positions,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, logit_scale)
    return model
