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


class UnnormalisedTextError(LossyTokenizerError):
    """A text is not in the form the tokenizer's normaliser produces (not NFC for Qwen's tokenizers), so the
    tokens spell a different text; the message names the fixes (normalise the data, or lossy_text=mask)."""


class VocabMismatchError(MergekdError, ValueError):
    """A model's output layer and a tokenizer disagree about the vocabulary."""


class NonFiniteError(MergekdError, FloatingPointError):
    """NaN or infinite values where finite numbers are required (teacher logits, losses)."""


def one_line(exc, prefix: str, *, explain=None, separator: str = " — ") -> ConfigError:
    """A pydantic ``ValidationError`` as one ConfigError line: ``prefix — field: problem; field: problem``.

    The one formatter of validation errors, so every command words them alike: the field path, then pydantic's
    message without its "Value error, " preamble (our validators already name the fix). ``explain(err, where)``
    may return a better message for an error (e.g. the valid keys of an ablation config), or None."""
    problems = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        message = (explain(err, where) if explain is not None else None) or err["msg"].removeprefix("Value error, ")
        named = not where or message.startswith((f"{where}:", f"{where.split('.')[0]}:"))  # it names itself
        problems.append(message if named else f"{where}: {message}")
    return ConfigError(f"{prefix}{separator}" + "; ".join(problems))
