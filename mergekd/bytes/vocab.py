"""ByteVocab: the exact byte string of every token id of a Hugging Face tokenizer.

Why: the whole of mergekd speaks bytes. A teacher's next-token distribution can only be turned into next-byte
distributions if we know, for every token id, exactly which bytes it spells. Tokenizer families encode that
differently:

* byte-level BPE (GPT-2, Llama-3, Qwen2.5, SmolLM2, tiktoken files converted by transformers): each byte is
  written as one printable character of the GPT-2 ``bytes_to_unicode`` table (``Ġ`` = space, ``Ċ`` = newline);
* SentencePiece style (Llama-2, Mistral, Gemma): ``▁`` stands for a space, ``<0xNN>`` tokens are raw bytes
  (byte fallback), the rest is UTF-8 text; some prepend a "dummy prefix" space to the text;
* added tokens: *special* ones (``<s>``, ``<|endoftext|>``, ``<unused3>``) carry no text and are flagged;
  non-special added tokens are matched literally in the text and spell their content.

A tokenizer whose normaliser changes the text (lowercasing, NFKC, ...) cannot give exact byte targets: the
round trip check in :func:`ByteVocab.align` refuses it, naming the tokenizer and the first differing byte.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from ..errors import EmptyTextError, LossyTokenizerError, TokenizerError

# Probe texts for the constructor's losslessness check: case, compatibility characters that NFKC would fold,
# combining marks, spacing, control characters, digits, CJK and emoji. (No U+2581 "▁": SentencePiece-style
# vocabularies use it for space and cannot spell it; texts that contain it are refused per text.)
LOSSLESS_PROBE = (
    "Hello WORLD, MiXeD case. ﬁ ligature, Ｆｕｌｌ width, ² ½ Å Ω, e\u0301 vs é.\n"
    "  two spaces,\ttab,\r\nCRLF, trailing   \n\n12345678901234 3.14159 日本語のテキスト 😀👩‍👩‍👧 🇫🇷 \x07 \ufffd"
)


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: printable stand-in character → byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@dataclass(frozen=True)
class Alignment:
    """How one text's canonical tokenization lines up with the text's UTF-8 bytes.

    ``token_ids[t]`` is the t-th id the tokenizer produced (specials such as BOS included);
    ``token_start[t]`` is the text byte offset where token t's bytes begin (−1 for the dummy-prefix space,
    which lies before the text); ``token_len[t]`` its byte length (0 for specials).
    """

    text_bytes: bytes
    token_ids: torch.Tensor  # int64 [T]
    token_start: torch.Tensor  # int64 [T]
    token_len: torch.Tensor  # int64 [T]
    prefix_len: int  # 1 when the tokenizer inserted a dummy-prefix space, else 0

    @property
    def num_bytes(self) -> int:
        return len(self.text_bytes)


@dataclass
class ByteVocab:
    """Token id → exact bytes for one tokenizer, plus which ids are special (carry no text).

    Build with :meth:`ByteVocab.from_tokenizer`. ``token_bytes[i]`` is ``None`` for special ids; ids at or
    beyond ``len(tokenizer)`` (models often pad their output layer) are special too.
    """

    name: str
    scheme: str  # "byte-level" or "sentencepiece"
    token_bytes: list[bytes | None]
    eos_ids: tuple[int, ...]
    adds_dummy_prefix: bool
    tokenizer: object = field(repr=False, compare=False, default=None)
    _index_cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ---------------------------------------------------------------------------------------------------------
    @classmethod
    def from_tokenizer(cls, tokenizer, name: str | None = None, check_lossless: bool = True) -> "ByteVocab":
        """Map every id of ``tokenizer`` (a transformers fast tokenizer) to its bytes.

        Raises :class:`TokenizerError` for a scheme we cannot map exactly and :class:`LossyTokenizerError`
        when the tokenizer changes text (checked on a probe string with case, NFKC-sensitive characters,
        spacing, CJK and emoji).
        """
        name = name or getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise TokenizerError(
                f"tokenizer {name!r} ({type(tokenizer).__name__}) has no fast (Rust) backend; mergekd needs a "
                "transformers fast tokenizer to read its vocabulary exactly"
            )
        spec = json.loads(backend.to_str())
        scheme = _detect_scheme(spec, name)
        size = len(tokenizer)
        pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        special_ids = set(int(i) for i in getattr(tokenizer, "all_special_ids", []) or [])
        special_ids |= {int(i) for i, tok in added.items() if getattr(tok, "special", False)}
        decode = _byte_level_decoder()
        out: list[bytes | None] = []
        for i, piece in enumerate(pieces):
            if i in special_ids or piece is None:
                out.append(None)
                continue
            if i in added:  # non-special added token: matched literally in the text
                content = added[i].content
                if scheme == "sentencepiece":
                    content = content.replace("\u2581", " ")
                out.append(content.encode("utf-8") or None)
                continue
            if scheme == "byte-level":
                try:
                    out.append(bytes(decode[ch] for ch in piece))
                except KeyError:
                    raise TokenizerError(
                        f"tokenizer {name!r}: token {i} {piece!r} has a character outside the byte-level "
                        "alphabet, so its bytes are unknown"
                    ) from None
            else:
                m = _BYTE_FALLBACK.match(piece)
                out.append(bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode("utf-8"))
        eos = tokenizer.eos_token_id
        eos_ids = (int(eos),) if isinstance(eos, int) and eos < size else ()
        vocab = cls(name=str(name), scheme=scheme, token_bytes=out, eos_ids=eos_ids, adds_dummy_prefix=False,
                    tokenizer=tokenizer)
        vocab.adds_dummy_prefix = vocab._probe_dummy_prefix()
        if check_lossless:
            vocab.align(LOSSLESS_PROBE)
        return vocab

    # ---------------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.token_bytes)

    @property
    def special_mask(self) -> torch.Tensor:
        """bool [V]: ids that spell no text (special tokens)."""
        return torch.tensor([b is None for b in self.token_bytes], dtype=torch.bool)

    def fingerprint(self) -> str:
        """sha256 over every id's bytes and special flag: identifies the vocabulary for caches and manifests."""
        h = hashlib.sha256(self.scheme.encode())
        h.update(b"\x01" if self.adds_dummy_prefix else b"\x00")
        for b in self.token_bytes:
            h.update(b"\xff" if b is None else len(b).to_bytes(4, "little") + b)
        return h.hexdigest()

    def decode_bytes(self, ids) -> bytes:
        """Concatenated bytes of ``ids`` (specials contribute nothing)."""
        return b"".join(self.token_bytes[int(i)] or b"" for i in ids)

    def tokenize(self, text: str) -> list[int]:
        """The teacher's own canonical tokenization of ``text``.

        ``add_special_tokens=True`` keeps the tokenizer's defaults (BOS where it adds one); with
        ``split_special_tokens=True`` a special-token *string* inside the data (``"<|endoftext|>"``, ``"<s>"``)
        is tokenised as the plain text it is, never turned into a control token (prompt-injection-safe, and
        the only reading under which the tokens spell the text's bytes).
        """
        enc = self.tokenizer(text, add_special_tokens=True, split_special_tokens=True)
        return list(enc["input_ids"])

    def align(self, text: str) -> Alignment:
        """Tokenise ``text`` and line the tokens up with its UTF-8 bytes, checking they spell it exactly."""
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        data = text.encode("utf-8")
        if not data:
            raise EmptyTextError("the text is empty: there are no bytes to predict")
        if self.tokenizer is None:
            raise TokenizerError(f"ByteVocab {self.name!r} has no tokenizer attached; build it with from_tokenizer")
        ids = self.tokenize(text)
        return self.align_ids(data, ids)

    def align_ids(self, data: bytes, ids: list[int]) -> Alignment:
        """Align given token ids with the bytes ``data`` (see :meth:`align`)."""
        lens = np.fromiter((len(self.token_bytes[i] or b"") if i < len(self) else 0 for i in ids),
                           dtype=np.int64, count=len(ids))
        spelled = self.decode_bytes(i for i in ids if i < len(self))
        prefix = 0
        if spelled != data:
            if self.adds_dummy_prefix and spelled[:1] == b" " and spelled[1:] == data:
                prefix = 1
            else:
                raise LossyTokenizerError(_describe_mismatch(self.name, data, spelled, ids, self))
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]]) - prefix
        return Alignment(
            text_bytes=data,
            token_ids=torch.as_tensor(np.asarray(ids, dtype=np.int64)),
            token_start=torch.as_tensor(starts),
            token_len=torch.as_tensor(lens),
            prefix_len=prefix,
        )

    # ---------------------------------------------------------------------------------------------------------
    def _probe_dummy_prefix(self) -> bool:
        """Does the tokenizer prepend a space to the text (SentencePiece's ``add_dummy_prefix``)?"""
        if self.scheme != "sentencepiece":
            return False
        ids = self.tokenize("a")
        return self.decode_bytes(i for i in ids if i < len(self)) == b" a"


def _detect_scheme(spec: dict, name: str) -> str:
    def types(node) -> list[str]:
        if not node:
            return []
        found = [node.get("type", "")]
        for key in ("decoders", "pretokenizers", "normalizers"):
            for child in node.get(key) or []:
                found += types(child)
        return found

    decoder = types(spec.get("decoder"))
    pre = types(spec.get("pre_tokenizer"))
    model = spec.get("model", {}) or {}
    if "ByteLevel" in decoder or "ByteLevel" in pre:
        return "byte-level"
    replaces_metaspace = any(
        d.get("type") == "Replace" and d.get("content") == " " for d in (spec.get("decoder") or {}).get("decoders", [])
    )
    if "Metaspace" in decoder or "Metaspace" in pre or replaces_metaspace or "ByteFallback" in decoder:
        return "sentencepiece"
    raise TokenizerError(
        f"tokenizer {name!r}: unsupported scheme (model {model.get('type')!r}, decoder {decoder or None}, "
        f"pre-tokenizer {pre or None}). mergekd maps byte-level BPE and SentencePiece-style vocabularies exactly; "
        "WordPiece-style tokenizers (BERT) drop or rewrite text and cannot give byte targets."
    )


def _describe_mismatch(name: str, data: bytes, spelled: bytes, ids, vocab: ByteVocab) -> str:
    n = min(len(data), len(spelled))
    i = next((k for k in range(n) if data[k] != spelled[k]), n)
    unk = [int(t) for t in ids if t < len(vocab) and vocab.token_bytes[t] is None]
    window = slice(max(0, i - 12), i + 12)
    got = repr(spelled[i:i + 1]) if i < len(spelled) else "end of tokens"
    want = repr(data[i:i + 1]) if i < len(data) else "end of text"
    msg = (
        f"tokenizer {name!r} does not reproduce the text byte for byte (its normaliser or unknown-token handling "
        f"changes text): first difference at byte {i}: text has {want}, tokens spell {got}.\n"
        f"  text  : {data[window]!r}\n  tokens: {spelled[window]!r}"
    )
    if unk:
        msg += f"\n  the tokenization contains special/unknown ids {sorted(set(unk))[:5]} inside the text"
    return msg + "\nmergekd only distils from tokenizers that round-trip text exactly."
