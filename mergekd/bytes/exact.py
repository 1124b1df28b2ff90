"""Exact next-byte probabilities of a token LM: marginalise over every tokenization that covers the prefix.

Why. The fast canonical-path rule (:mod:`mergekd.bytes.convert`) reads each byte's distribution off the single
canonical tokenization of the text. The byte-level language model that a token LM actually defines sums over
*all* token sequences that spell the bytes (Phan et al. 2410.09303, Vieira et al. 2412.03719, Hayase et al.
2506.14123). This module computes that sum, exactly or with a beam, so the fast rule's error can be measured
(:mod:`mergekd.fidelity`) and so ablations can train on exact targets.

Definition. Let ``s`` be the byte stream the tokens spell (the text's UTF-8 bytes, after a SentencePiece dummy
space when the tokenizer inserts one) and ``P(t_1..t_m)`` the probability of a sequence of non-special tokens
after the tokenizer's leading specials (BOS). The prefix probability of a byte string ``q`` is the mass of the
*cover* sequences: those whose bytes, without their last token, are a proper prefix of ``q``, and with it
start with ``q``. Partitioning them by the last boundary ``i`` gives::

    P(q) = Σ_{i ≤ |q|}  Σ_{h spells q[:i] exactly}  P(h) · M_h(q[i:])

where ``M_h(r)`` is the next-token mass, after ``h``, of the tokens whose bytes start with ``r`` (a trie-range
sum, exactly what the fast rule uses). The next-byte distribution is then::

    P(byte_j = c) = P(s[:j]·c) / Σ_c' P(s[:j]·c')

Conventions shared with the fast rule, so the two are comparable row for row:

* token → bytes is ``ByteVocab.token_bytes``; special ids carry no text and never appear in a cover sequence;
* the context is the tokenizer's own leading specials (BOS). A tokenizer that adds none gives the model nothing
  to predict the first token from, so, as in the fast rule, the first canonical token is taken as given and its
  bytes are undefined (``mask=False``);
* with a dummy prefix the stream is ``" " + text``: every hypothesis spells the space first, i.e. the byte
  distributions are conditioned on the dummy space being the stream's first byte;
* end of text: column 256 is 0 inside the text (the text goes on, as in the fast rule: EOS and other specials
  are conditioned away by the normalisation over 256 bytes); after the last byte, ``end_logprobs`` holds the
  next byte's cover mass and, in column 256, the EOS mass of the hypotheses that spell the whole text.

Search. A *state* is a token sequence that spells ``s[:i]`` exactly, with its log-probability and the model's
output after it. Byte positions are visited left to right; at position ``i`` the pending states that end there
are pruned (``prune``: drop those carrying less than that fraction of the position's mass; ``beam``: keep the
``beam`` most probable), run through the model one token each in one batched call (their parents' KV caches
are reused, left-padded to a common length and masked), and then

1. every state adds ``P(h)·M_h(s[i:j]·c)`` to row ``j`` for each trie node ``s[i:j]`` along the text, all
   states and nodes of the position in one vectorised :func:`~mergekd.bytes.convert.child_masses` call;
2. every token whose bytes are exactly ``s[i:i+d]`` extends each state into a pending state at ``i + d``.

With ``beam=None`` and ``prune=0`` nothing is dropped and the result is exact (float64 throughout, up to the
model's own arithmetic). Cost: one batched model call per byte position (one token per surviving state, on
its cached context) and one softmax + trie pass over the vocabulary per state. At most ``beam`` states
survive per byte, so a text of N bytes costs about N calls of ≤ ``beam`` rows: on 2 CPU cores at beam 8,
~0.13 s per byte for SmolLM2-135M and ~0.25 s per byte for Gemma-3-270m (the fast rule: 2-7 ms). Without a
beam the states are all the tokenizations of each prefix, a number that grows exponentially with N on real
vocabularies (``max_states`` turns that into an error instead of an out-of-memory kill). Each live state
keeps the KV cache of its context. Meant for short texts (hundreds of bytes) and fidelity measurements, not
for bulk targets. Beam 8 is enough in practice: on a 34-byte sentence its mean JSD to beam 128-256 is below
1e-10 bits for both real teachers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConfigError
from .convert import NUM_OUTCOMES, child_masses
from .targets import ByteTargets, byte_vocab_for, check_vocab_match, model_vocab_width, trie_index_for
from .trie import ByteTrieIndex
from .vocab import Alignment, ByteVocab

END = NUM_OUTCOMES - 1


@dataclass(eq=False)
class _State:
    """A token sequence that spells ``stream[:end]`` exactly and has been run through the model.

    ``kv`` is the per-layer (keys, values) after the sequence, batch dimension 1 (views into the batched call
    that produced it), or ``None`` when caching is off.
    """

    ids: tuple[int, ...]  # leading specials + the sequence's tokens
    logp: float  # log P(tokens | leading specials)
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None


@dataclass
class _Pending:
    """States that end at one byte position but have not been run yet: parent, last token, log-probability."""

    parents: list[_State] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)


@dataclass
class ExactResult:
    """Exact-mode byte targets plus what the search cost (the fidelity report prints both)."""

    targets: ByteTargets
    states: int  # states run through the model
    model_calls: int
    seconds: float
    max_states_per_byte: int
    used_kv_cache: bool


# ------------------------------------------------------------------------------------------------------------


def spelled_index(vocab: ByteVocab) -> dict[bytes, list[int]]:
    """bytes → every non-special id spelling exactly those bytes (several for byte-fallback duplicates).

    Built once per vocabulary (a pass over the ids at build time, never per byte) and cached on the vocab.
    """
    key = "exact:spelled"
    if key not in vocab._index_cache:
        table: dict[bytes, list[int]] = {}
        for i, b in enumerate(vocab.token_bytes):
            if b:
                table.setdefault(b, []).append(i)
        vocab._index_cache[key] = table
    return vocab._index_cache[key]


@dataclass
class _Walk:
    """What the text offers a state that ends at one byte position."""

    nodes: torch.Tensor  # [D+1] trie nodes of stream[i:i+d], d = 0..D (all within the stream)
    tokens: torch.Tensor  # [C] ids spelling exactly stream[i:i+d] for some d ≥ 1
    lengths: list[int]  # [C] their byte lengths d


def _walks(index: ByteTrieIndex, spelled: dict[bytes, list[int]], stream: bytes, start: int) -> list[_Walk | None]:
    """Trie walk along the stream from every position ≥ ``start`` (shared by all states ending there)."""
    edge_ptr = index.edge_ptr.numpy()
    edge_byte = index.edge_byte.numpy()
    out: list[_Walk | None] = [None] * (len(stream) + 1)
    for i in range(start, len(stream) + 1):
        nodes, tokens, lengths = [0], [], []
        node = 0
        for d in range(1, len(stream) - i + 1):
            lo, hi = edge_ptr[node], edge_ptr[node + 1]
            k = lo + int(np.searchsorted(edge_byte[lo:hi], stream[i + d - 1]))
            if k >= hi or edge_byte[k] != stream[i + d - 1]:
                break
            node = k + 1  # child node c ↔ edge c - 1 (see ByteTrieIndex.build)
            nodes.append(node)
            ids = spelled.get(stream[i:i + d], ())
            tokens += ids
            lengths += [d] * len(ids)
        out[i] = _Walk(torch.tensor(nodes, dtype=torch.int64), torch.tensor(tokens, dtype=torch.int64), lengths)
    return out


# ------------------------------------------------------------------------------------------------------------


class _Runner:
    """Runs states through the model: one token on top of the parent's KV cache, or the whole context."""

    def __init__(self, model, use_cache: bool, max_batch: int):
        self.model = model
        self.max_batch = max_batch
        self.use_cache = use_cache
        self.device = next(model.parameters()).device
        self.calls = 0
        self.max_context = 0

    def root(self, ids: list[int], max_context: int) -> tuple[torch.Tensor, _State]:
        """Run the leading context once; decides whether the model's cache can be reused for this text."""
        self.max_context = max_context
        out = self.model(input_ids=torch.tensor([ids], device=self.device), use_cache=self.use_cache)
        self.calls += 1
        kv = None
        if self.use_cache:
            kv = _cache_tensors(out.past_key_values, max_context)
            self.use_cache = kv is not None
        return out.logits[0, -1:].double(), _State(tuple(ids), 0.0, kv)

    def step(self, parents: list[_State], tokens: list[int], logps: list[float]) -> tuple[torch.Tensor, list[_State]]:
        """Logits [G, V] (float64) after each parent + token, and the new states (in the given order).

        Why one call per byte position: a forward pass of a real teacher costs about the same for 1 or 8 rows
        (it streams every weight), so the states of a position share one call whatever their context lengths.
        With the KV cache, contexts are left-padded and masked, each row keeping its own positions; without it,
        rows are grouped by context length (no padding at all: the reference path). Calls hold at most
        ``max_batch`` rows, which bounds the transient memory of a wide exact search.
        """
        if self.use_cache:
            groups = [list(range(len(parents)))]
        else:
            by_length: dict[int, list[int]] = {}
            for k, p in enumerate(parents):
                by_length.setdefault(len(p.ids), []).append(k)
            groups = list(by_length.values())
        groups = [g[c:c + self.max_batch] for g in groups for c in range(0, len(g), self.max_batch)]
        logits: list[torch.Tensor | None] = [None] * len(parents)
        states: list[_State | None] = [None] * len(parents)
        for members in groups:
            chosen = [parents[k] for k in members]
            ids = [tokens[k] for k in members]
            group_logits, group_kv = self._run_cached(chosen, ids) if self.use_cache else self._run_full(chosen, ids)
            for r, k in enumerate(members):
                logits[k] = group_logits[r]
                n = len(parents[k].ids) + 1  # the row's real positions are the last n (left padding)
                kv = None if group_kv is None else [(key[r:r + 1, :, -n:], val[r:r + 1, :, -n:])
                                                    for key, val in group_kv]
                states[k] = _State(parents[k].ids + (tokens[k],), logps[k], kv)
        return torch.stack(logits), states

    def _run_full(self, parents: list[_State], tokens: list[int]):
        """Recompute whole contexts of equal length (no cache, no padding)."""
        self.calls += 1
        ids = torch.tensor([p.ids + (t,) for p, t in zip(parents, tokens)], device=self.device)
        return self.model(input_ids=ids, use_cache=False).logits[:, -1].double(), None

    def _run_cached(self, parents: list[_State], tokens: list[int]):
        """One token per row on top of its parent's KV cache, rows left-padded to the longest context."""
        from transformers import DynamicCache

        self.calls += 1
        lengths = torch.tensor([len(p.ids) for p in parents], device=self.device)
        width = int(lengths.max())
        layers = []
        for layer in range(len(parents[0].kv)):
            key0, val0 = parents[0].kv[layer]
            keys = key0.new_zeros(len(parents), key0.shape[1], width, key0.shape[3])
            values = val0.new_zeros(len(parents), val0.shape[1], width, val0.shape[3])
            for r, p in enumerate(parents):  # rows × layers copies of [heads, len, dim] blocks
                keys[r, :, width - len(p.ids):] = p.kv[layer][0][0]
                values[r, :, width - len(p.ids):] = p.kv[layer][1][0]
            layers.append((keys, values))
        past = DynamicCache(ddp_cache_data=layers, config=self.model.config)
        kwargs = {}
        if bool((lengths != width).any()):
            cols = torch.arange(width + 1, device=self.device)
            kwargs["attention_mask"] = (cols[None, :] >= (width - lengths)[:, None]).long()
            kwargs["position_ids"] = lengths[:, None]
        ids = torch.tensor(tokens, device=self.device).unsqueeze(1)
        out = self.model(input_ids=ids, past_key_values=past, use_cache=True, **kwargs)
        return out.logits[:, -1].double(), _cache_tensors(out.past_key_values, self.max_context)


def _cache_tensors(cache, max_context: int):
    """Per-layer (keys, values) of a transformers cache, or None when it cannot be rebuilt faithfully.

    A cache can be split per state and rebuilt with ``DynamicCache`` when every layer keeps plain keys/values;
    sliding-window layers qualify only while the context stays inside their window. Anything else (recurrent
    states, quantised caches) falls back to recomputing the context: slower, same numbers.
    """
    layers = getattr(cache, "layers", None)
    if not layers:
        return None
    out = []
    for layer in layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor) or keys.dim() != 4:
            return None
        window = getattr(layer, "sliding_window", None)
        if getattr(layer, "is_sliding", False) and (window is None or max_context >= window):
            return None
        out.append((keys, values))
    return out


# ------------------------------------------------------------------------------------------------------------


def _select(pending: _Pending, beam: int | None, prune: float) -> _Pending:
    """The states kept at one position: ≥ ``prune`` of the position's mass, then the ``beam`` most probable."""
    logps = torch.tensor(pending.logps, dtype=torch.float64)
    order = torch.argsort(logps, descending=True, stable=True)
    if prune > 0:
        floor = torch.logsumexp(logps, 0) + math.log(prune)
        order = order[logps[order] >= floor]
    if beam is not None:
        order = order[:beam]
    keep = order.tolist()
    return _Pending([pending.parents[k] for k in keep], [pending.tokens[k] for k in keep],
                    [pending.logps[k] for k in keep])


def _context(vocab: ByteVocab, text: str,
             lossy_text: str = "refuse") -> tuple[bytes, list[int], int, int, Alignment]:
    """(stream, context ids, stream position where the search starts, dummy-prefix length, alignment).

    The context is the tokenizer's leading specials; without any, the first canonical token is taken as given
    (the fast rule cannot predict it either) and the search starts after it. For a text the normaliser changed
    (``lossy_text="mask"``) the stream is what the tokens spell, the normalised text; rows are mapped back later.
    """
    align = vocab.align(text, lossy_text=lossy_text)
    ids = align.token_ids.tolist()
    body = align.text_bytes if align.byte_map is None else vocab.decode_bytes(ids)[align.prefix_len:]
    stream = b" " * align.prefix_len + body
    lens = align.token_len.tolist()
    lead = 0
    while lead < len(ids) and lens[lead] == 0:
        lead += 1
    if lead > 0:
        return stream, ids[:lead], 0, align.prefix_len, align
    return stream, ids[:1], lens[0], align.prefix_len, align


def exact_search(model, tokenizer, text: str, *, beam: int | None = None, prune: float = 0.0,
                 vocab: ByteVocab | None = None, max_bytes: int | None = None, use_cache: bool = True,
                 max_states: int | None = 1024, max_batch: int = 64, lossy_text: str = "refuse") -> ExactResult:
    """Exact (``beam=None``, ``prune=0``) or beam-bounded cover search; see the module docstring.

    ``max_bytes`` stops after that many text bytes (rows past it are undefined and ``end_logprobs`` is None):
    row j only depends on the bytes before j, so the rows computed are the same as for the whole text.
    ``use_cache=False`` recomputes every context from scratch (a cross-check of the KV-cache path).
    ``max_states`` refuses (ConfigError) a search that would run more states than that at one byte position:
    every live state holds a KV cache, and an unbounded exact sum over a real vocabulary grows exponentially
    (it exhausts 24 GB of RAM on a 135M model within 20 bytes). ``max_batch`` caps the rows of one model call.
    ``lossy_text`` as for :func:`~mergekd.bytes.teacher_byte_logprobs_batch`: with ``"mask"`` the search runs
    over the normalised text the tokens spell, and rows map back to the text bytes the fast rule keeps (the
    same byte map, so both rules mask the same rows); ``max_bytes`` then counts bytes of that normalised text.
    """
    if beam is not None and beam < 1:
        raise ConfigError(f"beam={beam} must be ≥ 1 (or None for the exact sum)")
    if not 0.0 <= prune < 1.0:
        raise ConfigError(f"prune={prune} must be in [0, 1)")
    if max_batch < 1:
        raise ConfigError(f"max_batch={max_batch} must be ≥ 1")
    t0 = time.perf_counter()
    vocab = vocab or byte_vocab_for(tokenizer)
    width = model_vocab_width(model)
    check_vocab_match(vocab, width)
    index = trie_index_for(vocab, width, "cpu")
    eos = index.eos_ids
    stream, context, start, dummy, align = _context(vocab, text, lossy_text)
    num_text = len(stream) - dummy
    truncated = max_bytes is not None and max_bytes < num_text
    if truncated:
        stream = stream[: dummy + max(0, max_bytes)]
    last = len(stream)
    walks = _walks(index, spelled_index(vocab), stream, min(start, last))
    cover = torch.full((last + 1, NUM_OUTCOMES), float("-inf"), dtype=torch.float64)
    pending = [_Pending() for _ in range(last + 1)]
    runner = _Runner(model, use_cache, max_batch)
    states = widest = 0

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(start, last + 1):
                if i == start:
                    logits, root = runner.root(context, len(context) + last)
                    batch = [root]
                else:
                    if not pending[i].logps:
                        continue
                    chosen = _select(pending[i], beam, prune)
                    if max_states is not None and len(chosen.logps) > max_states:
                        raise ConfigError(
                            f"the covering search needs {len(chosen.logps)} states at byte {i - dummy} of the "
                            f"text, more than max_states={max_states}: pass beam=K (e.g. 8) or prune, or raise "
                            "max_states if memory allows (each state keeps its KV cache)")
                    logits, batch = runner.step(chosen.parents, chosen.tokens, chosen.logps)
                pending[i] = None  # parents no longer needed once their children ran: frees their KV caches
                states += len(batch)
                widest = max(widest, len(batch))
                logp = torch.tensor([s.logp for s in batch], dtype=torch.float64)
                logits = logits.cpu()
                lse = torch.logsumexp(logits, 1)
                _add_cover(cover, index, walks[i], i, logits, logp)
                if i == last and eos.numel():
                    eos_lp = torch.logsumexp(logp[:, None] + logits[:, eos] - lse[:, None], dim=(0, 1))
                    cover[i, END] = torch.logaddexp(cover[i, END], eos_lp)
                _extend(pending, walks[i], i, batch, logits, lse, logp)
    finally:
        model.train(was_training)

    targets = _assemble(cover, stream, dummy, start, align, truncated)
    return ExactResult(targets, states, runner.calls, time.perf_counter() - t0, widest, runner.use_cache)


def _add_cover(cover: torch.Tensor, index: ByteTrieIndex, walk: _Walk, i: int, logits: torch.Tensor,
               logp: torch.Tensor) -> None:
    """cover[i+d, c] ⊕= log Σ_h P(h)·M_h(stream[i:i+d]·c) for every node d of the walk, all states at once."""
    num_states, depth = logits.shape[0], walk.nodes.numel()
    row_pos = torch.arange(num_states).repeat_interleave(depth)
    row_node = walk.nodes.repeat(num_states)
    masses = child_masses(index, logits, row_pos, row_node, probs_dtype=torch.float64)
    terms = logp[:, None, None] + torch.log(masses).view(num_states, depth, 256)  # log 0 = -inf: no cover
    rows = cover[i:i + depth, :256]
    rows.copy_(torch.logaddexp(rows, torch.logsumexp(terms, 0)))


def _extend(pending: list[_Pending], walk: _Walk, i: int, batch: list[_State], logits: torch.Tensor,
            lse: torch.Tensor, logp: torch.Tensor) -> None:
    """Each state × each token spelling stream[i:i+d] → a pending state at i + d (scored now, run later)."""
    if walk.tokens.numel() == 0:
        return
    child_logp = (logp[:, None] + logits[:, walk.tokens] - lse[:, None]).tolist()
    tokens = walk.tokens.tolist()
    for h, state in enumerate(batch):
        for c, (token, d) in enumerate(zip(tokens, walk.lengths)):
            target = pending[i + d]
            target.parents.append(state)
            target.tokens.append(token)
            target.logps.append(child_logp[h][c])


def _assemble(cover: torch.Tensor, stream: bytes, dummy: int, start: int, align: Alignment,
              truncated: bool) -> ByteTargets:
    """Normalise cover masses into ByteTargets rows (text byte j ↔ stream position j + dummy, or
    ``align.byte_map[j]`` when the normaliser changed the text)."""
    text_bytes = align.text_bytes
    num_text = len(text_bytes)
    n_rows = len(stream) - dummy
    logprobs = torch.full((num_text, NUM_OUTCOMES), float("nan"), dtype=torch.float32)
    mask = torch.zeros(num_text, dtype=torch.bool)
    rows = cover[dummy:dummy + n_rows, :256]
    total = torch.logsumexp(rows, 1, keepdim=True)
    defined = torch.isfinite(total[:, 0]) & (torch.arange(n_rows) + dummy >= start)
    normalised = torch.cat([rows - total, torch.full_like(total, float("-inf"))], 1)
    target = torch.arange(n_rows) if align.byte_map is None else align.byte_map[:n_rows]
    defined &= target >= 0
    logprobs[target[defined]] = normalised[defined].float()
    mask[target[defined]] = True
    end = None
    if not truncated:
        final = cover[len(stream)]
        end = (final - torch.logsumexp(final, 0)).float() if torch.isfinite(final).any() else None
    return ByteTargets(logprobs=logprobs, mask=mask, text_bytes=text_bytes, end_logprobs=end,
                       masked_lossy=align.masked_lossy)


def exact_byte_logprobs(model, tokenizer, text: str, *, beam: int | None = None, prune: float = 0.0,
                        vocab: ByteVocab | None = None, max_bytes: int | None = None,
                        use_cache: bool = True, max_states: int | None = 1024,
                        lossy_text: str = "refuse") -> ByteTargets:
    """Next-byte log-probs of the byte LM that ``model`` defines, summed over all covering tokenizations.

    Same shape and conventions as :func:`~mergekd.bytes.teacher_byte_logprobs` (float32 [N, 257], column 256 =
    end of text, ``mask`` True where defined, ``end_logprobs`` after the last byte). ``beam=None`` and
    ``prune=0`` give the exact sum; see the module docstring for the search and its cost (short texts only).
    ``lossy_text`` decides a text the tokenizer's normaliser changes (see :func:`exact_search`).
    """
    return exact_search(model, tokenizer, text, beam=beam, prune=prune, vocab=vocab, max_bytes=max_bytes,
                        use_cache=use_cache, max_states=max_states, lossy_text=lossy_text).targets
