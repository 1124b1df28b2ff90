"""On-policy distillation through bytes: the student writes the continuations it is trained on.

Why: off-policy distillation trains the student on text it will never write itself (the data's, or a
teacher's); at inference it conditions on its own, imperfect prefixes and drifts (exposure bias). GKD
(Agarwal et al. 2024, "On-Policy Distillation of Language Models") fixes this by sampling continuations from
the student for a fraction λ of the batches and training it to match the teachers *on those samples*. Here the
teachers never see the student's tokens: a sample is decoded to bytes, cut to valid UTF-8, and from then on it
is plain text like any training chunk — every teacher tokenises it canonically, produces byte targets, the
mixer combines them, and the student is re-tokenised canonically for the byte-head loss (batch.py). (A sample
of a chat is scored the way the chat's reply is: each teacher reads the context rendered by its own chat template
and then the continuation, :meth:`Sample.teacher_view`.) A sampled
token sequence is usually *not* the canonical tokenisation of its own text (the student may write "hel"+"lo"),
so this re-tokenisation is what keeps the byte head supervising exactly the bytes the teachers scored.

What an on-policy batch trains: only the divergence between the byte head and the teachers' mixture, over the
continuation bytes (``kl_loss``: GKD recommends ``reverse-kl`` or ``jsd`` on-policy). Token CE and byte CE on the
student's own samples are left out: at temperature 1 their expected gradient is zero (E_q[∇ log q] = 0), so
they would add only noise, and below temperature 1 they sharpen the student towards its own mistakes.

Determinism: each sample has its own random stream, seeded from (seed, step, position in the global batch),
and uses the Gumbel-max trick (argmax of logits/T + Gumbel noise, after top-p) inside HF ``generate``. A sample
is then a pure function of the weights, the prompt and those three numbers: independent of batch composition,
of how many processes share the batch, and of any other use of the global RNG — so a resumed run samples
exactly what the uninterrupted run sampled, and a 2-process run what a 1-process run samples.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, \
    TopPLogitsWarper

from ..bytes import ByteVocab, byte_vocab_for
from ..errors import ConfigError
from ..text import valid_utf8_prefix


def stream_seed(seed: int, step: int, index: int) -> int:
    """A 63-bit seed for (run seed, step, example position); ``index = -1`` is the step's own draw."""
    digest = hashlib.sha256(f"mergekd-onpolicy:{seed}:{step}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def is_on_policy_step(step: int, fraction: float, seed: int) -> bool:
    """Whether the global batch of ``step`` is sampled by the student: a pure function of (seed, step), so every
    process agrees and a resumed run makes the same choices. About ``fraction`` of the steps are."""
    if fraction <= 0:
        return False
    if fraction >= 1:
        return True
    g = torch.Generator().manual_seed(stream_seed(seed, step, -1))
    return bool(torch.rand(1, generator=g).item() < fraction)


class GumbelSample(LogitsProcessor):
    """Turns greedy decoding into sampling with one private random stream per row (Gumbel-max trick).

    ``argmax(log p + G)`` with G ~ Gumbel(0, 1) i.i.d. is a sample from p; G = −log E with E ~ Exp(1) drawn from
    the row's own CPU generator. Ids at or past ``num_ids`` (output-layer padding past the tokenizer) are
    forbidden: they spell nothing and no teacher could score them.
    """

    def __init__(self, generators: list[torch.Generator], num_ids: int):
        self.generators = generators
        self.num_ids = num_ids

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        if scores.shape[-1] > self.num_ids:
            scores[:, self.num_ids:] = -math.inf
        noise = torch.stack([torch.empty(scores.shape[-1]).exponential_(generator=g) for g in self.generators])
        gumbel = -torch.log(noise.clamp(min=torch.finfo(torch.float32).tiny)).to(scores.device)
        return scores + gumbel


@dataclass(frozen=True)
class Sample:
    prompt: str
    continuation: str
    tokens: int  # sampled tokens before the first special token (or the length limit)
    trimmed: int  # bytes cut from the end because they did not form complete UTF-8 characters

    @property
    def text(self) -> str:
        return self.prompt + self.continuation

    @property
    def prompt_bytes(self) -> int:
        return len(self.prompt.encode("utf-8"))

    def teacher_view(self, example):
        """The teachers' view of this sample of ``example`` (a :class:`~mergekd.distill.prompts.Example`): for a
        chat, the continuation plays the reply — every teacher reads the chat's context rendered by its own
        template and then the continuation, whose rows land at the continuation's bytes of :attr:`text`; None
        for other data (teachers score :attr:`text` as it is)."""
        from .prompts import ChatTurn

        chat = getattr(example, "chat", None)
        if chat is None:
            return None
        return ChatTurn(chat.context, self.continuation, self.prompt_bytes, chat.where)


def sample_continuations(model, vocab: ByteVocab, prompts: Sequence[str], seeds: Sequence[int], *,
                         max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                         max_tokens: int | None = None, pad_id: int | None = None,
                         autocast=contextlib.nullcontext) -> list[Sample]:
    """Sample one continuation per prompt from ``model`` (any HF causal LM with ``generate``).

    Prompts are tokenised canonically (``vocab.tokenize``: BOS where the tokenizer adds one, special-token
    strings as plain text) and left-padded into one batch. A continuation is the bytes of the sampled tokens up
    to the first token that spells no text (EOS or any other special: the student chose to stop), cut to its
    longest valid UTF-8 prefix (:func:`~mergekd.text.valid_utf8_prefix`). ``max_tokens`` (the
    student's context) bounds prompt + continuation.
    """
    if len(prompts) != len(seeds):
        raise ValueError("one seed per prompt")
    if not prompts:
        return []
    tokenizer = vocab.tokenizer
    ids = [vocab.tokenize(p) for p in prompts]
    longest = max(len(x) for x in ids)
    new_tokens = max_new_tokens
    if max_tokens is not None:
        new_tokens = min(new_tokens, max_tokens - longest)
        if new_tokens < 1:
            raise ConfigError(f"a prompt of {longest} tokens leaves no room for a continuation in the student's "
                              f"context of {max_tokens} tokens; lower prompt_bytes")
    device = next(model.parameters()).device
    pad = pad_id if pad_id is not None else (tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    input_ids = torch.full((len(ids), longest), pad, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for r, x in enumerate(ids):  # left padding: every row's next token is at the same column
        input_ids[r, longest - len(x):] = torch.as_tensor(x)
        attention[r, longest - len(x):] = 1
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    processors.append(GumbelSample(generators, len(vocab)))
    eos = tokenizer.eos_token_id
    config = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=new_tokens, min_new_tokens=0,
                              eos_token_id=eos, pad_token_id=pad, use_cache=True)
    # generate() fills every unset field from model.generation_config (a pretrained student may ship a
    # repetition penalty, forced tokens, ...): swap in a neutral one so the samples follow only our settings
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA (peft) wraps the model
    was_training, saved = model.training, getattr(base, "generation_config", None)
    model.eval()
    base.generation_config = GenerationConfig()
    try:
        with torch.no_grad(), autocast():
            out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                 generation_config=config, logits_processor=processors)
    finally:
        base.generation_config = saved
        model.train(was_training)
    generated = out[:, longest:].cpu()
    return [_to_sample(prompt, row.tolist(), vocab) for prompt, row in zip(prompts, generated)]


def _to_sample(prompt: str, row: list[int], vocab: ByteVocab) -> Sample:
    tokens = 0
    for tokens, tid in enumerate(row + [-1]):  # stop at the first id that spells no text
        if tid < 0 or tid >= len(vocab) or vocab.token_bytes[tid] is None:
            break
    raw = vocab.decode_bytes(row[:tokens])
    data = valid_utf8_prefix(raw)
    return Sample(prompt, data.decode("utf-8"), tokens, len(raw) - len(data))


def fit_context(vocab: ByteVocab, sample: Sample, max_tokens: int) -> Sample:
    """``sample`` with its continuation shortened until prompt + continuation, tokenised canonically, fits in
    ``max_tokens``. Usually a no-op: the canonical tokenisation is rarely longer than the sampled one."""
    while sample.continuation:
        al = vocab.align(sample.text)
        n = int(al.token_ids.numel())
        if n <= max_tokens:
            return sample
        cut = max(int(al.token_start[max_tokens - 1]), sample.prompt_bytes)
        data = valid_utf8_prefix(sample.text.encode("utf-8")[:cut])
        cont = data[sample.prompt_bytes:].decode("utf-8")
        if cont == sample.continuation:
            cont = cont[:-1]
        sample = Sample(sample.prompt, cont, sample.tokens, sample.trimmed)
    return sample


# ------------------------------------------------------------------------------------------------------------
# Teacher-scored BPB of student samples
# ------------------------------------------------------------------------------------------------------------


def sample_bpb(student, prompts: Sequence[str], teachers: Sequence, *, tokenizer=None, mix="linear",
               max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
               batch_size: int = 8) -> dict:
    """Teacher-scored bits per byte of the student's own continuations of ``prompts``.

    Why this measure: held-out BPB scores the student on the data's text; it cannot see what the student does
    on its *own* prefixes, which is what on-policy training changes. Here the student samples a continuation of
    every prompt (deterministically: prompt i uses the stream ``stream_seed(seed, 0, i)``), and the teachers
    judge those bytes: −Σ log2 P_teacher(byte | prompt, earlier bytes) over continuation bytes only. Lower means
    the student writes text the teachers find likely. (Like any likelihood-of-samples score it rewards
    repetitive, low-entropy text too: read it beside held-out BPB, at a fixed temperature.)

    Args:
        student: an exported student folder (``OUT/final``, any HF causal LM folder) or a model in memory
            (then ``tokenizer`` is required).
        prompts: texts to continue (non-empty).
        teachers: loaded teachers (:func:`mergekd.teachers.load_teacher`, or ``Teacher(name, model, tokenizer)``).
        mix: mixer spec or :class:`mergekd.mix.Mixer` for the mixture's BPB (a learned mixer must already be
            fitted); None scores the teachers only.
        max_new_tokens, temperature, top_p, seed: sampling, as in ``mergekd distill --on-policy``.
        batch_size: prompts sampled and scored together.

    Returns:
        ``{"mixture": {"name", "bpb", "bytes"} | None, "teachers": {name: {"bpb", "bytes"}}, "sample_bytes": n,
        "trimmed_bytes": t, "samples": [{"prompt", "sample"}, ...]}``; BPB is NaN where no byte was scored.
    """
    from ..score import realised_byte_bpb
    from ..signal import actual_bytes, mix_per_text

    if isinstance(student, (str, Path)):
        from ..student import load_student

        folder = Path(student)
        if not folder.is_dir():
            raise ConfigError(f"student folder {folder} does not exist")
        model, tok = load_student(f"hf:{folder}")
    else:
        if tokenizer is None:
            raise ConfigError("sample_bpb: a student model in memory needs its tokenizer (tokenizer=...)")
        model, tok = student, tokenizer
    if not prompts or any(not p for p in prompts):
        raise ConfigError("sample_bpb: give at least one prompt, and no empty prompt")
    if not teachers:
        raise ConfigError("sample_bpb: give at least one loaded teacher")
    mixer = _mixer(mix)
    vocab = byte_vocab_for(tok)
    max_tokens = int(getattr(model.config, "max_position_embeddings", 2048))
    samples: list[Sample] = []
    for b0 in range(0, len(prompts), batch_size):
        group = list(prompts[b0:b0 + batch_size])
        seeds = [stream_seed(seed, 0, b0 + i) for i in range(len(group))]
        samples += sample_continuations(model, vocab, group, seeds, max_new_tokens=max_new_tokens,
                                        temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    texts = [s.text for s in samples]
    # rows of the continuation bytes in the concatenated texts
    lengths = torch.tensor([len(t.encode("utf-8")) for t in texts])
    firsts = torch.tensor([s.prompt_bytes for s in samples])
    row_text = torch.repeat_interleave(torch.arange(len(texts)), lengths)
    row_offset = torch.arange(int(lengths.sum())) - torch.repeat_interleave(lengths.cumsum(0) - lengths, lengths)
    continuation = row_offset >= firsts[row_text]
    actual = actual_bytes(texts)
    per_teacher, report = [], {}
    for teacher in teachers:
        targets = teacher.byte_targets(texts)
        targets = [replace(t, logprobs=t.logprobs.cpu(), mask=t.mask.cpu()) for t in targets]
        per_teacher.append(targets)
        logprobs = torch.cat([t.logprobs for t in targets])
        mask = torch.cat([t.mask for t in targets]) & continuation
        bpb, count = realised_byte_bpb(logprobs, mask, actual, teacher.name)
        report[teacher.name] = {"bpb": bpb, "bytes": count}
    mixture = None
    if mixer is not None:
        mixed, mixed_mask = mix_per_text(mixer, texts, per_teacher)
        bpb, count = realised_byte_bpb(mixed.cpu(), mixed_mask.cpu() & continuation, actual, f"mixture {mixer.name}")
        mixture = {"name": getattr(mixer, "name", str(mix)), "bpb": bpb, "bytes": count}
    return {"mixture": mixture, "teachers": report, "sample_bytes": int(continuation.sum()),
            "trimmed_bytes": sum(s.trimmed for s in samples),
            "samples": [{"prompt": s.prompt, "sample": s.continuation} for s in samples]}


def _mixer(mix):
    if mix is None:
        return None
    if isinstance(mix, str):
        from ..mix import build_mixer

        mixer = build_mixer(mix)
    else:
        mixer = mix
    if getattr(mixer, "needs_fit", False) and not getattr(mixer, "fitted", True):
        raise ConfigError(f"sample_bpb: mixer {getattr(mixer, 'name', mix)!r} learns its weights; pass a fitted "
                          "Mixer (mixer.fit(...) or Mixer.load(path)), not its name")
    return mixer
