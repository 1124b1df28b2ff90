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

A tokenizer whose normaliser changes ordinary text (lowercasing, NFKC, ...) cannot give exact byte targets: the
round trip check in :func:`ByteVocab.align` refuses it, naming the tokenizer and the first differing byte.

The one normaliser accepted is NFC (alone or inside a Sequence; Qwen2.5/Qwen3 hub tokenizers carry it): it is the
identity on text already in NFC form, which nearly all real text is. ``ByteVocab.normalizer`` records it; a text
the normaliser does change is refused per text (:class:`~mergekd.errors.UnnormalisedTextError`), or, with
``lossy_text="mask"``, aligned through a byte map that masks the rows of the tokens touching a changed
normalisation segment (:func:`lossy_byte_map`). See docs/byte-rule.md, "Tokenizers with a normaliser".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from ..errors import ConfigError, EmptyTextError, LossyTokenizerError, TokenizerError, UnnormalisedTextError

# Probe texts for the constructor's losslessness check: case, compatibility characters that NFKC would fold,
# combining marks, spacing, control characters, digits, CJK and emoji. (No U+2581 "▁": SentencePiece-style
# vocabularies use it for space and cannot spell it; texts that contain it are refused per text.)
LOSSLESS_PROBE = (
    "Hello WORLD, MiXeD case. ﬁ ligature, Ｆｕｌｌ width, ² ½ Å Ω, e\u0301 vs é.\n"
    "  two spaces,\ttab,\r\nCRLF, trailing   \n\n12345678901234 3.14159 日本語のテキスト 😀👩‍👩‍👧 🇫🇷 \x07 \ufffd"
)

# Unicode normal forms a tokenizer's normaliser may apply and still be accepted: NFC is the identity on NFC text
# (nearly all real text). NFD rewrites every precomposed letter (é) and NFKC/NFKD fold ligatures, full-width and
# superscript characters that ordinary NFC text contains, so they stay refused by the probe.
ACCEPTED_NORMALIZERS = ("NFC",)
UNICODE_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
# What to do with a text the accepted normaliser changes: refuse it (error naming the fix) or mask its rows.
LOSSY_TEXT_MODES = ("refuse", "mask")


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
    # Only for a text the normaliser changed, aligned with lossy_text="mask": token spans then index the bytes
    # the tokens spell (the normalised text), and byte_map[k] is the text byte that spelled byte k stands for,
    # -1 where its row is masked (the token touches a changed segment). masked_lossy counts text bytes with no
    # exact row.
    byte_map: torch.Tensor | None = None  # int64 [spelled bytes]
    masked_lossy: int = 0

    @property
    def num_bytes(self) -> int:
        return len(self.text_bytes)


@dataclass
class ByteVocab:
    """Token id → exact bytes for one tokenizer, plus which ids are special (carry no text).

    Build with :meth:`ByteVocab.from_tokenizer`. ``token_bytes[i]`` is ``None`` for special ids; ids at or
    beyond ``len(tokenizer)`` (models often pad their output layer) are special too. ``normalizer`` is the
    accepted Unicode form the tokenizer normalises to (``"NFC"``) or None.
    """

    name: str
    scheme: str  # "byte-level" or "sentencepiece"
    token_bytes: list[bytes | None]
    eos_ids: tuple[int, ...]
    adds_dummy_prefix: bool
    normalizer: str | None = None
    tokenizer: object = field(repr=False, compare=False, default=None)
    _index_cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ---------------------------------------------------------------------------------------------------------
    @classmethod
    def from_tokenizer(cls, tokenizer, name: str | None = None, check_lossless: bool = True) -> "ByteVocab":
        """Map every id of ``tokenizer`` (a transformers fast tokenizer) to its bytes.

        Raises :class:`TokenizerError` for a scheme we cannot map exactly and :class:`LossyTokenizerError`
        when the tokenizer changes text (checked on a probe string with case, NFKC-sensitive characters,
        spacing, CJK and emoji). An NFC normaliser is accepted (see :func:`normalizer_form`): the probe is then
        checked in NFC form, so any other change (lowercasing next to NFC) is still refused.
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
        normalizer = normalizer_form(spec.get("normalizer"))
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
                    normalizer=normalizer, tokenizer=tokenizer)
        vocab.adds_dummy_prefix = vocab._probe_dummy_prefix()
        if check_lossless:
            vocab.align(vocab.probe_text)
        return vocab

    # ---------------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.token_bytes)

    @property
    def probe_text(self) -> str:
        """The lossless probe in the normaliser's form: what a round trip must reproduce at construction."""
        return unicodedata.normalize(self.normalizer, LOSSLESS_PROBE) if self.normalizer else LOSSLESS_PROBE

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

    def align(self, text: str, lossy_text: str = "refuse") -> Alignment:
        """Tokenise ``text`` and line the tokens up with its UTF-8 bytes, checking they spell it exactly.

        With a normaliser (``self.normalizer``), a text it would change is refused with
        :class:`UnnormalisedTextError` (``lossy_text="refuse"``) or aligned through a byte map
        (``lossy_text="mask"``, see :func:`lossy_byte_map`). Text already in normal form costs one
        ``unicodedata.is_normalized`` check more than without a normaliser.
        """
        if lossy_text not in LOSSY_TEXT_MODES:
            raise ConfigError(f"lossy_text={lossy_text!r}: write one of {', '.join(LOSSY_TEXT_MODES)}")
        if not isinstance(text, str):
            raise TypeError(f"text must be str, got {type(text).__name__}")
        data = text.encode("utf-8")
        if not data:
            raise EmptyTextError("the text is empty: there are no bytes to predict")
        if self.tokenizer is None:
            raise TokenizerError(f"ByteVocab {self.name!r} has no tokenizer attached; build it with from_tokenizer")
        ids = self.tokenize(text)
        if self.normalizer is None or unicodedata.is_normalized(self.normalizer, text):
            return self.align_ids(data, ids)
        return self._align_unnormalised(text, data, ids, lossy_text)

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

    def _align_unnormalised(self, text: str, data: bytes, ids: list[int], lossy_text: str) -> Alignment:
        """A text the normaliser changes: refuse it by default, or map the rows that survive it exactly.

        Why refuse by default: the tokens spell the normalised text, not the input, so some rows have no exact
        target; masking them is a choice the user makes (``lossy_text=mask``), not one made silently.
        """
        spelled = self.decode_bytes(i for i in ids if i < len(self))
        if spelled == data or (self.adds_dummy_prefix and spelled == b" " + data):
            return self.align_ids(data, ids)  # the normaliser left these tokens alone after all
        if lossy_text == "refuse":
            raise UnnormalisedTextError(_describe_unnormalised(self, data, spelled, ids))
        normalised = unicodedata.normalize(self.normalizer, text)
        base = self.align_ids(normalised.encode("utf-8"), ids)  # any other change is refused here, as usual
        byte_map = lossy_byte_map(text, self.normalizer, base)
        masked = len(data) - int((byte_map >= 0).sum())
        return dataclasses.replace(base, text_bytes=data, byte_map=byte_map, masked_lossy=masked)

    # ---------------------------------------------------------------------------------------------------------
    def _probe_dummy_prefix(self) -> bool:
        """Does the tokenizer prepend a space to the text (SentencePiece's ``add_dummy_prefix``)?"""
        if self.scheme != "sentencepiece":
            return False
        ids = self.tokenize("a")
        return self.decode_bytes(i for i in ids if i < len(self)) == b" a"


def _node_types(node) -> list[str]:
    """Every ``type`` in a tokenizer.json component, Sequence members included (depth first)."""
    if not node:
        return []
    found = [node.get("type", "")]
    for key in ("decoders", "pretokenizers", "normalizers"):
        for child in node.get(key) or []:
            found += _node_types(child)
    return found


def normalizer_form(node) -> str | None:
    """The accepted Unicode form of a tokenizer.json ``normalizer`` (``"NFC"``), or None.

    Why only a form that is alone among the Unicode steps: NFC next to NFKC (say) is NFKC in effect. Other
    steps in a Sequence (SentencePiece's Prepend/Replace, or Lowercase) are judged by the constructor's probe,
    run in the form returned here, exactly as for a tokenizer without NFC.
    """
    forms = {t for t in _node_types(node) if t in UNICODE_FORMS}
    if len(forms) == 1 and next(iter(forms)) in ACCEPTED_NORMALIZERS:
        return next(iter(forms))
    return None


def _detect_scheme(spec: dict, name: str) -> str:
    decoder = _node_types(spec.get("decoder"))
    pre = _node_types(spec.get("pre_tokenizer"))
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


def _mismatch_lines(name: str, data: bytes, spelled: bytes, ids, vocab: ByteVocab) -> str:
    """Where the tokens stop spelling the text: the first differing byte and a window around it."""
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
    return msg


def _describe_mismatch(name: str, data: bytes, spelled: bytes, ids, vocab: ByteVocab) -> str:
    return _mismatch_lines(name, data, spelled, ids, vocab) + (
        "\nmergekd only distils from tokenizers that round-trip text exactly.")


def _describe_unnormalised(vocab: ByteVocab, data: bytes, spelled: bytes, ids) -> str:
    """The per-text refusal: where it differs, why (the text is not in the normaliser's form) and both fixes."""
    form = vocab.normalizer
    return _mismatch_lines(vocab.name, data, spelled, ids, vocab) + (
        f"\nthe text is not in {form} form, and tokenizer {vocab.name!r} {form}-normalises its input, so its tokens "
        f"spell the normalised text. Fix: {form}-normalise the input data first (`mergekd normalize --form {form} "
        f"--data IN --out OUT`, or unicodedata.normalize({form!r}, text)), or set the teacher option lossy_text=mask (spec string NAME?lossy_text=mask) to mask the rows "
        "of the tokens the normaliser changes.")


# ------------------------------------------------------------------------------------------------------------
# Normalisation segments: which bytes of a text survive the normaliser unchanged


@lru_cache(maxsize=1)
def _composing_starters() -> frozenset[str]:
    """Starters (combining class 0) that NFC may merge with what precedes them, so no segment starts there.

    Why: a segment must be normalised on its own (NFC of the text = NFC of its segments, joined). That holds
    at a starter unless it is the second half of a canonical composition (Hangul vowel/trailing jamo, a few
    Indic/Tibetan vowel signs) or decomposes to a non-starter first (Tibetan U+0F73...). Computed once from
    the Unicode database (~0.3 s), and only when a text is not normalised.
    """
    out = {chr(c) for c in range(0x1161, 0x1176)} | {chr(c) for c in range(0x11A8, 0x11C3)}  # Hangul V, T
    for cp in range(0x110000):
        ch = chr(cp)
        decomposition = unicodedata.decomposition(ch)
        if not decomposition or decomposition.startswith("<"):
            continue
        parts = decomposition.split()
        if len(parts) == 2 and not unicodedata.combining(chr(int(parts[1], 16))):
            out.add(chr(int(parts[1], 16)))
        if not unicodedata.combining(ch) and unicodedata.combining(unicodedata.normalize("NFD", ch)[0]):
            out.add(ch)
    return frozenset(out)


def normalisation_segments(text: str, form: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``text`` into segments (a starter and the characters it may combine with) that ``form`` normalises
    independently → (text byte length, normalised byte length, changed) per segment, as arrays.

    Linear in the text (one pass over its characters); only run for a text that is not normalised.
    """
    blockers = _composing_starters()
    combining = unicodedata.combining
    cuts = [i for i, ch in enumerate(text) if i and not combining(ch) and ch not in blockers]
    bounds = [0, *cuts, len(text)]
    text_len, norm_len, changed, pieces = [], [], [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        piece = text[a:b]
        normal = piece if piece.isascii() else unicodedata.normalize(form, piece)  # ASCII is in every form
        text_len.append(len(piece.encode("utf-8")))
        norm_len.append(len(normal.encode("utf-8")))
        changed.append(normal != piece)
        pieces.append(normal)
    if "".join(pieces) != unicodedata.normalize(form, text):  # the segmentation's premise, checked, not assumed
        raise LossyTokenizerError(f"cannot split this text into independent {form} segments; "
                                  f"{form}-normalise it before use")
    return (np.asarray(text_len, dtype=np.int64), np.asarray(norm_len, dtype=np.int64),
            np.asarray(changed, dtype=bool))


def lossy_byte_map(text: str, form: str, align: Alignment) -> torch.Tensor:
    """Spelled byte → text byte for an alignment of ``form``-normalised text; -1 where the row is masked.

    Segments the normaliser leaves unchanged map byte for byte; a byte of a changed segment has no counterpart,
    and every byte of a token that touches a changed segment is masked too (its prefix, and so its row, is
    not the input's). Vectorised over bytes; ``align`` spans index the normalised text's bytes.
    """
    text_len, norm_len, changed = normalisation_segments(text, form)
    seg = np.repeat(np.arange(len(norm_len)), norm_len)
    text_start = np.cumsum(text_len) - text_len
    norm_start = np.cumsum(norm_len) - norm_len
    byte_map = text_start[seg] + np.arange(seg.size) - norm_start[seg]
    bad = changed[seg]
    start = align.token_start.numpy().clip(min=0)  # the dummy-prefix space lies before the text
    end = (align.token_start + align.token_len).numpy().clip(min=0)
    crossed = np.concatenate([[0], np.cumsum(bad)])
    touched = crossed[end] - crossed[start] > 0
    bad |= np.repeat(touched, end - start)
    byte_map[bad] = -1
    return torch.as_tensor(byte_map)
