"""The byte core: any teacher's next-token distribution → next-byte distributions aligned to the text.

See :mod:`mergekd.bytes.convert` for the canonical-path rule and :mod:`mergekd.bytes.targets` for windowing.
"""

from .convert import END, NUM_OUTCOMES, byte_logprobs_from_logits, end_logprobs_from_logits
from .targets import (
    ByteTargets,
    byte_vocab_for,
    check_vocab_match,
    teacher_byte_logprobs,
    teacher_byte_logprobs_batch,
    trie_index_for,
)
from .trie import ByteTrieIndex
from .vocab import ACCEPTED_NORMALIZERS, LOSSY_TEXT_MODES, Alignment, ByteVocab

__all__ = [
    "ACCEPTED_NORMALIZERS", "END", "LOSSY_TEXT_MODES", "NUM_OUTCOMES", "Alignment", "ByteTargets", "ByteTrieIndex",
    "ByteVocab", "byte_logprobs_from_logits",
    "byte_vocab_for", "check_vocab_match", "end_logprobs_from_logits", "teacher_byte_logprobs",
    "teacher_byte_logprobs_batch", "trie_index_for",
]
