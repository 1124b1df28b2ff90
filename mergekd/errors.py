"""Exception types: one base class so the CLI can turn any of them into a clean message and exit code.

Why a hierarchy: users script mergekd; catching ``MergekdError`` must be enough to separate "you gave me bad
input" from a genuine crash, and the subclasses let tests assert the *kind* of failure, not its wording.
"""

from __future__ import annotations


class MergekdError(Exception):
    """Base class of every error mergekd raises on purpose (bad input, bad config, corrupt files)."""


class ConfigError(MergekdError, ValueError):
    """A configuration value is invalid; the message names the field and the fix."""


class UnknownNameError(MergekdError, KeyError):
    """A registry lookup failed; the message lists close matches."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""


class EmptyTextError(MergekdError, ValueError):
    """A text (or a whole data file) has no bytes to score or train on."""


class TokenizerError(MergekdError, ValueError):
    """A tokenizer cannot be used exactly at the byte level (unknown scheme, unmappable token)."""


class LossyTokenizerError(TokenizerError):
    """The tokenizer changes the text (normaliser, unknown tokens): its tokens do not spell the input bytes."""


class VocabMismatchError(MergekdError, ValueError):
    """A model's output layer and a tokenizer disagree about the vocabulary."""


class NonFiniteError(MergekdError, FloatingPointError):
    """NaN or infinite values where finite numbers are required (teacher logits, losses)."""
