"""Teacher → byte targets for whole texts: tokenise, run the model (windowed), convert, assemble.

Public API::

    from mergekd.bytes import teacher_byte_logprobs, teacher_byte_logprobs_batch
    targets = teacher_byte_logprobs(model, tokenizer, text)
    targets.logprobs   # float32 [N, 257]: row j = P(byte j | bytes < j); column 256 = end of text
    targets.mask       # bool [N]: rows that are defined (the covering token has a predicting position)
    targets.end_logprobs  # float32 [257]: what follows the last byte (column 256 = end of sequence)
    targets.masked_lossy  # rows masked because the tokenizer's normaliser changed the text there (lossy_text=mask)

Long texts (more tokens than ``max_length``) are split into windows of ``max_length`` tokens that overlap by
``overlap`` tokens (default: half a window). Each window starts with the tokenizer's leading special tokens
(BOS) again; a token's prediction is taken from the first window in which it has at least ``overlap`` tokens of
left context (the first window supplies the first tokens). So every byte keeps ≥ ``overlap`` tokens of left
context, and every prediction comes from exactly one window.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ..errors import ConfigError, VocabMismatchError
from .convert import byte_logprobs_from_logits, end_logprobs_from_logits
from .trie import ByteTrieIndex
from .vocab import Alignment, ByteVocab


@dataclass
class ByteTargets:
    """Next-byte distributions of one teacher over one text (see module docstring)."""

    logprobs: torch.Tensor  # float32 [N, 257]
    mask: torch.Tensor  # bool [N]
    text_bytes: bytes
    end_logprobs: torch.Tensor | None = None  # float32 [257]
    # rows left undefined because the tokenizer's normaliser changed the text there (lossy_text="mask"), so
    # a report can say how much of the text a teacher could not score exactly; 0 for text it leaves alone
    masked_lossy: int = 0

    @property
    def num_bytes(self) -> int:
        return len(self.text_bytes)

    def realised_logprobs(self) -> torch.Tensor:
        """log P(actual byte j) for every row j: [N] (meaningful where ``mask``)."""
        actual = torch.frombuffer(bytearray(self.text_bytes), dtype=torch.uint8).long().to(self.logprobs.device)
        return self.logprobs.gather(1, actual.unsqueeze(1)).squeeze(1)

    def realised_bpb(self) -> float:
        """−Σ log2 P(byte_j) over masked rows / their count."""
        lp = self.realised_logprobs()[self.mask]
        if lp.numel() == 0:
            return float("nan")
        return float(-lp.double().sum() / lp.numel() / math.log(2))


# ------------------------------------------------------------------------------------------------------------


def byte_vocab_for(tokenizer, name: str | None = None) -> ByteVocab:
    """The ByteVocab of ``tokenizer``, built once and remembered on the tokenizer object."""
    cached = getattr(tokenizer, "_mergekd_byte_vocab", None)
    if cached is None:
        cached = ByteVocab.from_tokenizer(tokenizer, name=name)
        try:
            setattr(tokenizer, "_mergekd_byte_vocab", cached)
        except AttributeError:  # exotic tokenizer objects with __slots__: just don't cache
            pass
    return cached


def trie_index_for(vocab: ByteVocab, num_logits: int, device: torch.device | str = "cpu") -> ByteTrieIndex:
    """The ByteTrieIndex of ``vocab`` for logits of width ``num_logits`` on ``device`` (cached)."""
    key = (int(num_logits), str(device))
    if key not in vocab._index_cache:
        cpu_key = (int(num_logits), "cpu")
        if cpu_key not in vocab._index_cache:
            vocab._index_cache[cpu_key] = ByteTrieIndex.build(vocab.token_bytes, num_logits, vocab.eos_ids)
        vocab._index_cache[key] = vocab._index_cache[cpu_key].to(device)
    return vocab._index_cache[key]


def model_vocab_width(model) -> int:
    """Number of logits the model produces per position."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.vocab_size)


def check_vocab_match(vocab: ByteVocab, width: int) -> None:
    """Refuse a model/tokenizer pair whose vocabularies cannot be the same one.

    Models often pad their output layer past ``len(tokenizer)`` (Qwen2.5: 151,936 logits for 151,665 ids);
    those extra ids spell nothing and are treated as special. Fewer logits than ids, or far more (a different
    model family), is an error.
    """
    n = len(vocab)
    if width < n:
        raise VocabMismatchError(
            f"model outputs {width} logits but tokenizer {vocab.name!r} has {n} ids: they are not a pair "
            "(load the tokenizer that ships with the model)"
        )
    if width > n + max(256, n // 4):
        raise VocabMismatchError(
            f"model outputs {width} logits but tokenizer {vocab.name!r} has only {n} ids: far more than vocabulary "
            "padding explains, so they are probably not a pair (load the tokenizer that ships with the model)"
        )


@dataclass
class _Window:
    text: int  # index of the text in the batch
    input_ids: list[int]
    target_body: torch.Tensor  # body-token indices whose predictions this window supplies
    target_row: torch.Tensor  # window position (logits row) predicting each of them
    end_row: int | None  # window position whose logits describe what follows the text


def _plan_windows(text_index: int, ids: list[int], lengths: torch.Tensor, max_length: int,
                  overlap: int, lead: int | None = None) -> list[_Window]:
    if lead is None:  # the leading specials (BOS) that start every window
        lead = 0
        while lead < len(ids) and lengths[lead] == 0:
            lead += 1
    prefix, body = ids[:lead], ids[lead:]
    room = max_length - lead
    if room <= overlap:
        raise ConfigError(f"max_length={max_length} leaves no room after {lead} leading specials and "
                          f"overlap={overlap}; raise max_length or lower overlap")
    stride = room - overlap
    last_text = int(torch.nonzero(lengths[lead:] > 0).max()) if len(body) else -1
    windows = []
    start = 0
    while True:
        chunk = body[start:start + room]
        first_target = 0 if start == 0 else start + overlap
        targets = torch.arange(first_target, start + len(chunk))
        rows = lead + (targets - start) - 1  # the position before the target predicts it
        keep = rows >= 0
        end_row = lead + (last_text - start) if start <= last_text < start + len(chunk) else None
        windows.append(_Window(text_index, prefix + chunk, targets[keep], rows[keep], end_row))
        if start + room >= len(body):
            break
        start += stride
    # the end-of-text row must come from the window with the most context: the last one containing it
    for w in windows[:-1]:
        w.end_row = None if windows[-1].end_row is not None else w.end_row
    return windows


def _rows_for_tokens(align: Alignment, index: ByteTrieIndex, lead: int, body_idx: torch.Tensor,
                     logit_row: torch.Tensor):
    """Byte rows (text byte, logits row, trie node) for the given body tokens, vectorised.

    For a text the normaliser changed (``align.byte_map``), token bytes index the normalised text: they are
    mapped back to text bytes, and bytes without an exact counterpart (-1) get no row.
    """
    tok = lead + body_idx
    ids = align.token_ids[tok]
    start = align.token_start[tok]
    length = align.token_len[tok]
    skip = torch.clamp(-start, min=0)  # dummy-prefix bytes lie before the text
    counts = torch.clamp(length - skip, min=0)
    owner = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    within = torch.arange(owner.numel()) - (torch.cumsum(counts, 0) - counts)[owner]
    offset = within + skip[owner]
    text_pos = start[owner] + offset
    if align.byte_map is not None:
        text_pos = align.byte_map[text_pos]
        keep = text_pos >= 0
        owner, offset, text_pos = owner[keep], offset[keep], text_pos[keep]
    node = index.nodes_for(ids[owner], offset)
    return text_pos, logit_row[owner], node


def teacher_byte_logprobs_batch(model, tokenizer, texts: list[str], *, vocab: ByteVocab | None = None,
                                max_length: int | None = None, overlap: int | None = None,
                                batch_size: int = 8, progress=None, lossy_text: str = "refuse",
                                contexts: list[list[int] | None] | None = None) -> list[ByteTargets]:
    """Byte targets of ``model`` for each text (see module docstring). Runs under ``torch.no_grad``.

    ``batch_size`` windows go through the model at once (right-padded). ``progress``, if given, is called
    with the number of windows finished after each batch. ``lossy_text`` decides a text the tokenizer's
    normaliser (NFC) would change: ``"refuse"`` raises UnnormalisedTextError, ``"mask"`` masks the rows of the
    tokens touching a changed segment and counts them in ``ByteTargets.masked_lossy`` (other rows are exact).

    ``contexts[i]`` (token ids, or None) is context that text ``i`` continues: the model reads those ids, then
    the text's own tokens (its canonical tokenisation without the leading specials the tokenizer adds, which a
    context brings itself), and rows exist for the text's bytes only — a chat teacher's prompt rendered by its
    own chat template (special tokens as control tokens) before the reply (:func:`after_context`).
    """
    vocab = vocab or byte_vocab_for(tokenizer)
    width = model_vocab_width(model)
    check_vocab_match(vocab, width)
    device = next(model.parameters()).device
    index = trie_index_for(vocab, width, device)
    cpu_index = trie_index_for(vocab, width, "cpu")  # row planning happens on the CPU
    if max_length is None:
        max_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    overlap = max_length // 2 if overlap is None else overlap
    if not 0 <= overlap < max_length:
        raise ConfigError(f"overlap={overlap} must be in [0, max_length={max_length})")

    aligns = [vocab.align(t, lossy_text=lossy_text) for t in texts]
    if contexts is not None and len(contexts) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(contexts)} contexts")
    windows: list[_Window] = []
    leads = []
    for i, al in enumerate(aligns):
        context = contexts[i] if contexts is not None else None
        if context is None:
            lead = int((al.token_len.cumsum(0) == 0).sum())  # leading specials (BOS)
            plan = _plan_windows(i, al.token_ids.tolist(), al.token_len, max_length, overlap)
        else:
            al, lead = after_context(al, context)
            aligns[i] = al
            plan = _plan_windows(i, al.token_ids.tolist(), al.token_len, max_length, overlap, lead=lead)
            # windows that hold context only (a long conversation before the reply) supply no row: skip them
            plan = [w for w in plan if w.end_row is not None or bool((al.token_len[lead + w.target_body] > 0).any())]
        leads.append(lead)
        windows.extend(plan)

    out_logprobs = [torch.full((al.num_bytes, 257), float("nan"), dtype=torch.float32) for al in aligns]
    out_mask = [torch.zeros(al.num_bytes, dtype=torch.bool) for al in aligns]
    out_end: list[torch.Tensor | None] = [None] * len(aligns)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b0 in range(0, len(windows), batch_size):
                batch = windows[b0:b0 + batch_size]
                width_tokens = max(len(w.input_ids) for w in batch)
                ids = torch.full((len(batch), width_tokens), pad_id, dtype=torch.long)
                attn = torch.zeros_like(ids)
                for r, w in enumerate(batch):
                    ids[r, : len(w.input_ids)] = torch.tensor(w.input_ids)
                    attn[r, : len(w.input_ids)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits
                for r, w in enumerate(batch):
                    al = aligns[w.text]
                    text_pos, logit_row, node = _rows_for_tokens(al, cpu_index, leads[w.text],
                                                                 w.target_body, w.target_row)
                    if text_pos.numel():
                        rows_used, local = torch.unique(logit_row, return_inverse=True)
                        actual = torch.frombuffer(bytearray(al.text_bytes), dtype=torch.uint8).long()[text_pos]
                        lp = byte_logprobs_from_logits(index, logits[r, rows_used.to(device)],
                                                       local.to(device), node.to(device), actual.to(device))
                        out_logprobs[w.text][text_pos] = lp.cpu()
                        out_mask[w.text][text_pos] = True
                    if w.end_row is not None:
                        out_end[w.text] = end_logprobs_from_logits(index, logits[r, w.end_row:w.end_row + 1])[0].cpu()
                if progress is not None:
                    progress(len(batch))
    finally:
        model.train(was_training)
    results = []
    for al, lp, mask, end in zip(aligns, out_logprobs, out_mask, out_end):
        lp[~mask] = float("nan")
        results.append(ByteTargets(logprobs=lp, mask=mask, text_bytes=al.text_bytes, end_logprobs=end,
                                   masked_lossy=al.masked_lossy))
    return results


def after_context(align: Alignment, context: list[int]) -> tuple[Alignment, int]:
    """``align`` (a text's canonical tokenisation) read after the token ids ``context``: the text's leading
    specials (the BOS the tokenizer adds to any text) are dropped, since the context brings its own; the context
    tokens spell no text byte (length 0). Returns the alignment and the number of leading ids every window
    repeats: the tokenizer's own leading specials when the context starts with them (a template's BOS), else 0.
    A context longer than a window slides like any text (each row keeps >= ``overlap`` tokens of left context).
    """
    own = int((align.token_len.cumsum(0) == 0).sum())
    body = slice(own, None)
    ctx = torch.as_tensor(list(context), dtype=torch.long)
    zeros = torch.zeros(len(ctx), dtype=torch.long)
    lead = own if own and ctx[:own].tolist() == align.token_ids[:own].tolist() else 0
    joined = dataclasses.replace(align, token_ids=torch.cat([ctx, align.token_ids[body]]),
                                 token_start=torch.cat([zeros, align.token_start[body]]),
                                 token_len=torch.cat([zeros, align.token_len[body]]))
    return joined, lead


def teacher_byte_logprobs(model, tokenizer, text: str, **kwargs) -> ByteTargets:
    """Byte targets of ``model`` (a causal LM) with its ``tokenizer`` for one ``text`` (keywords as for
    :func:`teacher_byte_logprobs_batch`, ``lossy_text`` included)."""
    return teacher_byte_logprobs_batch(model, tokenizer, [text], **kwargs)[0]
