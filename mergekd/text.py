"""UTF-8-safe slicing and chunking: the one place that knows where a character starts.

Why one module: byte targets are aligned to UTF-8 bytes, so every cut (chunks, prompts, held-out slices, sampled
continuations, passages) is made in bytes, and a cut inside a character would make a text that is not a ``str``
(or silently lose a byte). These helpers cut at character boundaries only.
"""

from __future__ import annotations

from .errors import ConfigError


def _continuation(byte: int) -> bool:
    return (byte & 0xC0) == 0x80


def utf8_prefix(data: bytes, max_bytes: int) -> bytes:
    """The longest prefix of ``data`` of at most ``max_bytes`` bytes that does not end inside a character
    (at least one whole character, so a prompt is never empty)."""
    if len(data) <= max_bytes:
        return data
    end = max_bytes
    while end > 0 and _continuation(data[end]):
        end -= 1
    if end == 0:  # the first character is longer than max_bytes: keep it whole
        end = 1
        while end < len(data) and _continuation(data[end]):
            end += 1
    return data[:end]


def utf8_suffix(data: bytes, max_bytes: int) -> bytes:
    """The longest suffix of at most ``max_bytes`` bytes that starts at a character boundary (≥ 1 character)."""
    if len(data) <= max_bytes:
        return data
    start = len(data) - max_bytes
    while start < len(data) and _continuation(data[start]):
        start += 1
    if start == len(data):
        start = len(data) - 1
        while start > 0 and _continuation(data[start]):
            start -= 1
    return data[start:]


def valid_utf8_prefix(data: bytes) -> bytes:
    """``data`` cut before its first byte that is not part of a complete UTF-8 character.

    Why cut rather than replace: a sampled token may end in the middle of a character (byte-level BPE pieces and
    SentencePiece ``<0xNN>`` byte fallbacks spell single bytes), or the student may sample bytes that are no
    text at all. Every training text must be a ``str`` (teachers tokenise strings), and replacing the bad bytes
    with U+FFFD would train on bytes the student never produced. The prefix is exactly what the student wrote.
    """
    try:
        data.decode("utf-8")
        return data
    except UnicodeDecodeError as exc:
        return data[:exc.start]


def head(text: str, max_bytes: int) -> str:
    """The longest start of ``text`` of at most ``max_bytes`` UTF-8 bytes (may be empty: a partial first character
    is dropped, never split)."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    end = max(0, int(max_bytes))
    while end > 0 and _continuation(data[end]):
        end -= 1
    return data[:end].decode("utf-8")


def char_bounds(data: bytes, start: int | None, stop: int | None) -> tuple[int, int]:
    """The byte range [a, b) of ``data[start:stop]`` moved inward to UTF-8 character boundaries."""
    a, b, _ = slice(start, stop).indices(len(data))
    while a < len(data) and _continuation(data[a]):  # start inside a character: skip to the next one
        a += 1
    while a < b < len(data) and _continuation(data[b]):  # stop inside a character: end before it
        b -= 1
    return a, max(a, b)


def chunk_text(text: str, max_bytes: int) -> list[str]:
    """Split ``text`` into pieces of at most ``max_bytes`` UTF-8 bytes, preferring to cut after whitespace
    (within the last quarter of a piece) and never inside a character. Concatenated, the pieces are the text."""
    if max_bytes < 4:
        raise ConfigError("chunk size must be at least 4 bytes (one UTF-8 character)")
    data = text.encode("utf-8")
    pieces = []
    start = 0
    while start < len(data):
        end = min(start + max_bytes, len(data))
        if end < len(data):
            while end > start and _continuation(data[end]):  # do not cut inside a character
                end -= 1
            floor = start + (3 * max_bytes) // 4
            cut = max(data.rfind(b" ", floor, end), data.rfind(b"\n", floor, end))
            if cut > start:
                end = cut + 1
        pieces.append(data[start:end].decode("utf-8"))
        start = end
    return pieces
