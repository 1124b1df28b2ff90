"""Text data: read .txt / .jsonl files and cut them into training/scoring chunks of bounded byte length.

Why bytes: every teacher and the student see the same text, and byte targets are aligned to UTF-8 bytes, so
chunk sizes are set in bytes (a chunk never splits a character; it ends at whitespace when one is near).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError, EmptyTextError
from .text import chunk_text  # noqa: F401  (re-exported: readers chunk through mergekd.data)


def jsonl_records(path: Path):
    """``(line number, object)`` for each non-blank line of a JSONL file; a line that is not a JSON object is a
    ConfigError naming the file and line (so a bad line in a 10 GB file is found without guessing)."""
    with Path(path).open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not UTF-8 (byte {exc.start} of the line is "
                                  f"0x{raw[exc.start]:02x}); convert the file, e.g. iconv -t utf-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{path}:{n}: each line must be a JSON object")
            yield n, record


def read_documents(path: Path | str) -> list[str]:
    """Documents of a data file: ``.jsonl`` (one JSON object per line with a ``text`` field) or plain text
    (the whole file is one document)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"data file {path} does not exist")
    if path.suffix == ".jsonl":
        docs = []
        for n, record in jsonl_records(path):
            if not isinstance(record.get("text"), str):
                raise ConfigError(f"{path}:{n}: each line needs a string field 'text'")
            docs.append(record["text"])
    else:
        raw = path.read_bytes()
        try:
            docs = [raw.decode("utf-8")]
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} is not UTF-8 (byte {exc.start}); convert it first, e.g. iconv -t utf-8") from None
    docs = [d for d in docs if d]
    if not docs or not any(d.strip() for d in docs):
        raise EmptyTextError(f"data file {path} holds no text")
    return docs


def load_chunks(path: Path | str, max_bytes: int, limit_bytes: int | None = None) -> list[str]:
    """All chunks of a data file (documents chunked independently), optionally only the first ``limit_bytes``."""
    chunks: list[str] = []
    total = 0
    for doc in read_documents(path):
        for piece in chunk_text(doc, max_bytes):
            if not piece.strip():
                continue
            chunks.append(piece)
            total += len(piece.encode("utf-8"))
            if limit_bytes is not None and total >= limit_bytes:
                return chunks
    return chunks
