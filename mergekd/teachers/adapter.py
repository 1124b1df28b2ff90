"""The teacher adapter: one loaded teacher that turns texts into byte targets.

Why an adapter: everything downstream (scoring, mixing, distillation, the byte cache) needs only "byte targets
for these texts" and a name to report; it must not care whether the teacher came from a hub id, a folder or a
GGUF file, or which tokenizer family it uses. The adapter owns the model, its tokenizer and its ByteVocab,
checks that they belong together at load time, and chooses CPU-sensible windows.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..bytes import ByteTargets, ByteVocab, byte_vocab_for, check_vocab_match, teacher_byte_logprobs_batch
from ..bytes.targets import model_vocab_width
from ..errors import ConfigError, EmptyTextError, VocabMismatchError
from .loaders import MissingTeacherError, load_gguf, load_hf
from .options import DEFAULT_MAX_LENGTH, LOGITS_BUDGET_BYTES, MAX_AUTO_BATCH, TeacherOptions
from .registry import ResolvedTeacher, resolve_teacher
from .spec import TeacherSpec
from .vocab_cache import attach


class Teacher:
    """A loaded teacher: ``byte_targets(texts)`` → one :class:`~mergekd.bytes.ByteTargets` per text.

    Build with :func:`load_teacher` (from a spec string) or directly from a model and tokenizer already in
    memory. Use as a context manager, or call :meth:`close`, to free the weights before the next teacher loads.
    """

    def __init__(self, name: str, model, tokenizer, *, options: TeacherOptions | None = None,
                 family: str | None = None, spec: TeacherSpec | None = None, vocab: ByteVocab | None = None,
                 load_seconds: float = 0.0):
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.options = options or TeacherOptions()
        self.spec = spec
        self.family = family or getattr(getattr(model, "config", None), "model_type", None) or "?"
        self.load_seconds = load_seconds
        if vocab is not None:  # a checked, saved map (GGUF cache); share it with other users of the tokenizer
            attach(tokenizer, vocab)
        self.vocab: ByteVocab = byte_vocab_for(tokenizer, name)  # refuses lossy/unsupported tokenizers
        check_vocab_match(self.vocab, model_vocab_width(model))
        if self.max_length <= self.overlap:
            raise ConfigError(f"teacher {name!r}: overlap={self.overlap} must be smaller than "
                              f"max_length={self.max_length}")

    # ---------------------------------------------------------------------------------------------------------
    @property
    def max_length(self) -> int:
        """Tokens per window: the option, else min(model positions, DEFAULT_MAX_LENGTH)."""
        if self.options.max_length is not None:
            return self.options.max_length
        positions = getattr(self.model.config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH
        return int(min(positions, DEFAULT_MAX_LENGTH))

    @property
    def overlap(self) -> int:
        return self.options.overlap if self.options.overlap is not None else self.max_length // 2

    @property
    def batch_size(self) -> int:
        """Windows per forward pass: the option, else as many as keep float32 logits under the budget."""
        if self.options.batch_size is not None:
            return self.options.batch_size
        per_window = self.max_length * model_vocab_width(self.model) * 4
        return max(1, min(MAX_AUTO_BATCH, LOGITS_BUDGET_BYTES // per_window))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict[str, Any]:
        """Facts for reports and manifests (the vocabulary fingerprint identifies the tokenizer exactly)."""
        return {"name": self.name, "family": self.family, "vocab_size": len(self.vocab),
                "scheme": self.vocab.scheme, "vocab_fingerprint": self.vocab.fingerprint(),
                "max_length": self.max_length, "overlap": self.overlap, "batch_size": self.batch_size,
                "device": str(self.device), "byte_rule": self.options.byte_rule,
                "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
                "params": sum(p.numel() for p in self.model.parameters()),
                "load_seconds": round(self.load_seconds, 3)}

    # ---------------------------------------------------------------------------------------------------------
    def byte_targets(self, texts: Sequence[str], progress: Callable[[int], None] | None = None,
                     contexts: Sequence[list[int] | None] | None = None) -> list[ByteTargets]:
        """Byte targets for each text (under ``torch.no_grad``; windowed by the byte core).

        Texts go to the byte core :attr:`batch_size` at a time, and ``progress`` (if given) is called with the number
        of text bytes finished after each group, so a caller can show an honest bar in bytes. Texts of a few KB
        are one window each, so grouping by texts batches windows as well as the core would.

        ``contexts[i]``: token ids the model reads before text ``i`` (a chat prompt rendered by this teacher's own
        template); rows then cover the text's bytes only (see ``teacher_byte_logprobs_batch``). The canonical
        byte rule only: the exact rule searches over a text's own tokenisations and takes no context.
        """
        if self.model is None:
            raise ConfigError(f"teacher {self.name!r} was closed; load it again")
        if isinstance(texts, str):
            raise TypeError("byte_targets takes a list of texts, not one string")
        for i, text in enumerate(texts):
            if not text:
                raise EmptyTextError(f"text {i} is empty: there are no bytes to predict")
        rule = self.options.rule()
        if contexts is not None and len(contexts) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(contexts)} contexts")
        if rule.is_exact:
            if contexts is not None and any(c is not None for c in contexts):
                raise ConfigError(f"teacher {self.name!r}: byte_rule {self.options.byte_rule!r} scores a text on "
                                  "its own and cannot condition on a chat prompt rendered by the teacher's template; "
                                  "use byte_rule=canonical for chat data")
            return self._exact_targets(texts, rule, progress)
        out: list[ByteTargets] = []
        step = self.batch_size
        with torch.no_grad():
            for start in range(0, len(texts), step):
                group = list(texts[start:start + step])
                ctx = list(contexts[start:start + step]) if contexts is not None else None
                out.extend(teacher_byte_logprobs_batch(
                    self.model, self.tokenizer, group, vocab=self.vocab, max_length=self.max_length,
                    overlap=self.overlap, batch_size=step, lossy_text=self.options.lossy_text, contexts=ctx))
                if progress is not None:
                    progress(sum(len(t.encode("utf-8")) for t in group))
        return out

    def _exact_targets(self, texts: Sequence[str], rule, progress) -> list[ByteTargets]:
        """The covering rule, one text at a time (each text is one search over its whole byte prefix).

        The search keeps the whole text as context (no windows), so a text longer than the model's positions is
        refused up front rather than failing deep inside the model.
        """
        from ..bytes.exact import exact_byte_logprobs

        positions = getattr(self.model.config, "max_position_embeddings", None)
        out: list[ByteTargets] = []
        for i, text in enumerate(texts):
            if positions is not None:
                needed = len(self.vocab.align(text, lossy_text=self.options.lossy_text).token_ids) + 2
                if needed > positions:
                    raise ConfigError(f"teacher {self.name!r}: text {i} needs {needed} tokens of context but the "
                                      f"model has {positions} positions; the exact byte rule does not window — "
                                      "use shorter texts (e.g. --seq-bytes) or byte_rule=canonical")
            out.append(exact_byte_logprobs(self.model, self.tokenizer, text, beam=rule.beam, prune=rule.prune,
                                           vocab=self.vocab, max_states=rule.max_states,
                                           lossy_text=self.options.lossy_text))
            if progress is not None:
                progress(len(text.encode("utf-8")))
        return out

    # ---------------------------------------------------------------------------------------------------------
    def to(self, device: str | torch.device) -> "Teacher":
        """Move the weights (training loops swap teachers between CPU and GPU to hold one at a time)."""
        if self.model is None:
            raise ConfigError(f"teacher {self.name!r} was closed; load it again")
        self.model.to(device)
        self.options = self.options.model_copy(update={"device": str(device)})
        return self

    def close(self) -> None:
        """Drop the weights (and CUDA cache) so the next teacher fits in memory."""
        on_cuda = self.model is not None and self.device.type == "cuda"
        self.model = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()

    def __enter__(self) -> "Teacher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Teacher({self.name!r}, family={self.family!r}, vocab={len(self.vocab)})"


def one_at_a_time(specs: Sequence, overrides: Mapping[str, Any] | None = None,
                  before: Callable[[Any], None] | None = None) -> Iterator[Teacher]:
    """Yield each teacher of ``specs`` (spec strings or resolved specs) loaded, and free it before the next loads.

    Why one generator: scoring, capturing and verifying all hold one teacher in memory at a time (a 7B teacher
    and a 270M one never share the RAM); ``before(spec)`` runs just before each load (progress messages)."""
    for spec in specs:
        if before is not None:
            before(spec)
        teacher = load_teacher(spec, overrides=overrides)
        try:
            yield teacher
        finally:
            teacher.close()
            del teacher
            gc.collect()


def check_loadable(resolved: ResolvedTeacher) -> None:
    """Fail in a second — before minutes are spent on other teachers — if this teacher cannot load here: its
    files are not on this machine and cannot be downloaded (GGUF and packaged files, or hub downloads off)."""
    from huggingface_hub.constants import is_offline_mode

    spec = resolved.spec
    if spec.is_installed() or (spec.is_hub_id() and not is_offline_mode()):
        return
    hint = f"; install it with: {spec.install_hint}" if spec.install_hint else ""
    offline = " and hub downloads are off (HF_HUB_OFFLINE=1)" if spec.is_hub_id() else ""
    raise MissingTeacherError(f"teacher {resolved.name!r} ({spec.location_label()}) is not on this machine"
                              f"{offline}{hint}")


def load_teacher(spec: str | ResolvedTeacher, overrides: Mapping[str, Any] | None = None,
                 **options: Any) -> Teacher:
    """Load a teacher from a spec string (``smollm2-135m``, ``hf:PATH_OR_ID?dtype=bfloat16``, ``gguf:FILE``).

    ``overrides`` and keyword ``options`` (e.g. ``device="cuda"``, ``max_length=512``; None means "not set")
    are defaults from the caller, such as command-line flags; options written in the spec string win over
    them. A :class:`ResolvedTeacher` already carries its options and takes none.
    """
    if isinstance(spec, ResolvedTeacher):
        if overrides or any(v is not None for v in options.values()):
            raise TypeError("load_teacher: a ResolvedTeacher already has its options; pass a spec string instead")
        resolved = spec
    else:
        resolved = resolve_teacher(spec, {**(overrides or {}), **options})
    s, opts, where = resolved.spec, resolved.options, f"teacher {resolved.name!r}"
    start = time.perf_counter()
    location = s.resolve_location()
    tokenizer = s.tokenizer
    if s.source == "gguf":
        model, tok, vocab = load_gguf(Path(location).expanduser(), opts, where, cache_name=s.name,
                                      tokenizer=tokenizer)
    else:
        model, tok, vocab = load_hf(location, opts, where, tokenizer=tokenizer)
    if s.vocab_size is not None and len(tok) != s.vocab_size:
        raise VocabMismatchError(f"{where}: tokenizer has {len(tok)} ids but the spec promises {s.vocab_size}; "
                                 "the files do not belong to this teacher (or the spec is out of date)")
    family = s.family if s.family != "?" else None
    teacher = Teacher(resolved.name, model, tok, options=opts, family=family, spec=s, vocab=vocab)
    teacher.load_seconds = time.perf_counter() - start
    return teacher
