"""Identities a cache is keyed on: the data (file + chunking), the teacher weights, the conversion rule.

Why hashes and not names: a cache is only valid for the exact chunks the distillation loop will look up by index
and for the exact weights that produced it. A renamed data file with the same text is the same data; an edited
one is not, even at the same path.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data import load_chunks

from ..bytes.rule import RULE_NAME as CONVERSION_RULE
from ..bytes.rule import RULE_VERSION as CONVERSION_RULE_VERSION

_READ_BLOCK = 1 << 20


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunks_sha256(chunks: list[str]) -> str:
    """Hash of the chunk texts *and* their boundaries (each chunk is length-prefixed)."""
    h = hashlib.sha256()
    for chunk in chunks:
        raw = chunk.encode("utf-8")
        h.update(len(raw).to_bytes(8, "little"))
        h.update(raw)
    return h.hexdigest()


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every state-dict tensor (name, dtype, shape, raw bytes), in name order.

    Computed once per capture (≈ 1 s per GB); identical weights loaded from GGUF or from the safetensors copy
    hash the same because both hold the same dequantised float32 tensors.
    """
    h = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if tensor.numel():
            h.update(tensor.reshape(-1).view(torch.uint8).numpy())  # buffer, no copy
    return h.hexdigest()


@dataclass(frozen=True)
class DataIdentity:
    """What the chunks of a run are: the file's content hash, the chunk size, and the chunks themselves."""

    path: str
    sha256: str
    seq_bytes: int
    num_chunks: int
    num_bytes: int
    chunks_sha256: str

    def to_json(self) -> dict:
        return asdict(self)


def data_identity(path: Path | str, seq_bytes: int) -> tuple[DataIdentity, list[str]]:
    """The identity of ``load_chunks(path, seq_bytes)`` and the chunks (chunk i of the cache = chunk i here)."""
    chunks = load_chunks(path, seq_bytes)
    ident = DataIdentity(path=str(Path(path).resolve()), sha256=sha256_file(path), seq_bytes=int(seq_bytes),
                         num_chunks=len(chunks), num_bytes=sum(len(c.encode("utf-8")) for c in chunks),
                         chunks_sha256=chunks_sha256(chunks))
    return ident, chunks


def conversion_rule() -> dict:
    return {"rule": CONVERSION_RULE, "version": CONVERSION_RULE_VERSION}
