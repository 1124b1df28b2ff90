"""Student specs: an existing model (``hf:PATH_OR_ID``, ``gguf:PATH``, a local folder) or a fresh one.

Why a spec string: ``mergekd distill --student new:llama?tokenizer=gpt2&layers=4&hidden=256`` lets small
experiments build a randomly initialised student with a *real* tokenizer (any of the offline ones, or a local
tokenizer folder) without writing a config file; ``hf:``/``gguf:`` load pretrained students.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl

from ..errors import ConfigError

# Architecture defaults of fresh students, per family. Dropout is 0 so runs are reproducible and resumable.
NEW_DEFAULTS = {"layers": 4, "hidden": 256, "heads": 4, "kv_heads": None, "intermediate": None, "ctx": 1024,
                "tie": True, "seed": 0}
NEW_FAMILIES = ("llama", "qwen2", "mistral")


@dataclass(frozen=True)
class StudentSpec:
    kind: str  # "new", "hf" or "gguf"
    target: str  # family for "new", else a path or hub id
    options: dict = field(default_factory=dict)


def parse_student_spec(spec: str) -> StudentSpec:
    """``new:FAMILY?tokenizer=NAME&layers=4&hidden=256&heads=4&ctx=1024``, ``hf:PATH_OR_ID``, ``gguf:PATH``,
    ``teacher:NAME`` (the pretrained weights of a registered teacher, e.g. the offline SmolLM2-135M) or a bare
    local folder."""
    if not spec or not spec.strip():
        raise ConfigError("student: empty spec; use e.g. new:llama?tokenizer=gpt2 or hf:PATH")
    spec = spec.strip()
    if spec.startswith("new:"):
        family, _, query = spec[4:].partition("?")
        family = family or "llama"
        if family not in NEW_FAMILIES:
            raise ConfigError(f"student: unknown family {family!r} in {spec!r}; choose one of {', '.join(NEW_FAMILIES)}")
        opts = dict(parse_qsl(query, keep_blank_values=True))
        unknown = set(opts) - set(NEW_DEFAULTS) - {"tokenizer"}
        if unknown:
            raise ConfigError(f"student: unknown option(s) {sorted(unknown)} in {spec!r}; valid: "
                              f"tokenizer, {', '.join(NEW_DEFAULTS)}")
        if "tokenizer" not in opts:
            raise ConfigError(f"student: {spec!r} needs tokenizer=NAME (an offline tokenizer such as gpt2, "
                              "qwen2.5, mistral-v3, or a local tokenizer folder)")
        parsed: dict = {"tokenizer": opts.pop("tokenizer")}
        for key, default in NEW_DEFAULTS.items():
            if key not in opts:
                parsed[key] = default
                continue
            raw = opts[key]
            try:
                parsed[key] = raw.lower() in ("1", "true", "yes") if key == "tie" else int(raw)
            except ValueError:
                raise ConfigError(f"student: option {key}={raw!r} in {spec!r} must be an integer") from None
        return StudentSpec("new", family, parsed)
    if spec.startswith("hf:"):
        return StudentSpec("hf", spec[3:])
    if spec.startswith("teacher:"):
        if not spec[8:].strip():
            raise ConfigError("student: teacher: needs a registered teacher name, e.g. teacher:smollm2-135m")
        return StudentSpec("teacher", spec[8:].strip())
    if spec.startswith("gguf:"):
        return StudentSpec("gguf", spec[5:])
    if Path(spec).is_dir():
        return StudentSpec("hf", spec)
    raise ConfigError(f"student: cannot read spec {spec!r}; use new:FAMILY?tokenizer=..., hf:PATH_OR_ID, "
                      "gguf:PATH, teacher:NAME (a registered teacher's pretrained weights), or an existing local "
                      "folder")


def _new_config(family: str, vocab_size: int, o: dict, tokenizer):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    heads = o["heads"]
    if o["hidden"] % heads:
        raise ConfigError(f"student: hidden={o['hidden']} must be divisible by heads={heads}")
    common = dict(vocab_size=vocab_size, hidden_size=o["hidden"], num_hidden_layers=o["layers"],
                  num_attention_heads=heads, num_key_value_heads=o["kv_heads"] or heads,
                  intermediate_size=o["intermediate"] or 4 * o["hidden"], max_position_embeddings=o["ctx"],
                  tie_word_embeddings=o["tie"], bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[family]
    cfg = cls(**common)
    if hasattr(cfg, "attention_dropout"):
        cfg.attention_dropout = 0.0
    return cfg


def load_student(spec: str | StudentSpec, *, torch_dtype=None):
    """(model, tokenizer) for a student spec. Fresh students are seeded by their ``seed`` option."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..assets import load_tokenizer

    s = parse_student_spec(spec) if isinstance(spec, str) else spec
    if s.kind == "new":
        tok = load_tokenizer(s.options["tokenizer"])
        config = _new_config(s.target, len(tok), s.options, tok)
        state = torch.random.get_rng_state()
        torch.manual_seed(s.options["seed"])
        try:
            model = AutoModelForCausalLM.from_config(config)
        finally:
            torch.random.set_rng_state(state)
        return model, tok
    if s.kind == "teacher":  # a registered teacher's weights and tokenizer, trained as the student (offline)
        from ..teachers import load_teacher

        teacher = load_teacher(s.target, overrides={"device": "cpu"})
        model = teacher.model.float() if torch_dtype is None else teacher.model.to(torch_dtype)
        model.requires_grad_(True)
        return model, teacher.tokenizer
    if s.kind == "hf":
        try:
            tok = AutoTokenizer.from_pretrained(s.target)
            model = AutoModelForCausalLM.from_pretrained(s.target, dtype=torch_dtype)
        except OSError as exc:
            raise ConfigError(f"student: cannot load {s.target!r} ({exc}). Offline? Point hf: at a local folder.") from exc
        return model, tok
    path = Path(s.target)
    if not path.is_file():
        raise ConfigError(f"student: GGUF file {path} does not exist")
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch_dtype)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config  # dequantised weights; a plain model from here on
    return model, tok
