"""Save a ByteVocab next to a cached teacher so reloading skips rebuilding it.

Why: building a ByteVocab re-parses the tokenizer's JSON and walks every id (Gemma-3: 262,144 ids, ≈ 5 s), as
long as loading the model itself. The cache folder is immutable once written, so the map computed when it was
built stays valid; on load it is still checked twice: its sha256 fingerprint must match the one recorded (the
file is intact) and the tokenizer must spell mergekd's lossless probe text through it byte for byte (it belongs
to this tokenizer) — the same probe :meth:`ByteVocab.from_tokenizer` runs.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from ..bytes import ByteVocab
from ..io import write_with
from ..errors import MergekdError

VOCAB_FILE = "mergekd-byte-vocab.npz"


def save_byte_vocab(vocab: ByteVocab, folder: Path) -> None:
    """Write ``vocab`` as arrays (bytes blob, offsets, special flags) plus its metadata and fingerprint."""
    lengths = np.array([len(b) if b is not None else 0 for b in vocab.token_bytes], dtype=np.int64)
    special = np.array([b is None for b in vocab.token_bytes], dtype=np.bool_)
    blob = np.frombuffer(b"".join(b for b in vocab.token_bytes if b is not None), dtype=np.uint8)
    meta = {"name": vocab.name, "scheme": vocab.scheme, "eos_ids": list(vocab.eos_ids),
            "adds_dummy_prefix": vocab.adds_dummy_prefix, "fingerprint": vocab.fingerprint(),
            "normalizer": vocab.normalizer}
    write_with(folder / VOCAB_FILE, lambda fh: np.savez(
        fh, lengths=lengths, special=special, blob=blob,
        meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)))


def load_byte_vocab(folder: Path, tokenizer) -> ByteVocab | None:
    """The saved ByteVocab for ``tokenizer``, or None if there is none or it fails a check (then the caller
    builds it from the tokenizer as usual)."""
    path = folder / VOCAB_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            lengths, special, blob = data["lengths"], data["special"], data["blob"].tobytes()
            meta = json.loads(data["meta"].tobytes().decode("utf-8"))
        if len(lengths) != len(tokenizer):
            return None
        ends = np.cumsum(lengths).tolist()
        starts = [0] + ends[:-1]
        token_bytes = [None if sp else blob[s:e] for s, e, sp in zip(starts, ends, special.tolist())]
        vocab = ByteVocab(name=meta["name"], scheme=meta["scheme"], token_bytes=token_bytes,
                          eos_ids=tuple(int(i) for i in meta["eos_ids"]),
                          adds_dummy_prefix=bool(meta["adds_dummy_prefix"]), tokenizer=tokenizer,
                          normalizer=meta.get("normalizer"))
        if vocab.fingerprint() != meta["fingerprint"]:
            return None
        vocab.align(vocab.probe_text)  # raises if the tokenizer does not spell the probe through this map
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, MergekdError):
        return None
    return vocab


def attach(tokenizer, vocab: ByteVocab) -> None:
    """Make :func:`mergekd.bytes.byte_vocab_for` return ``vocab`` for ``tokenizer`` (its per-tokenizer cache)."""
    setattr(tokenizer, "_mergekd_byte_vocab", vocab)
