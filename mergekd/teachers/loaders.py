"""Load a teacher's model and tokenizer from a local folder, a hub id, or a GGUF file (through its cache).

Why one module: every source ends in the same pair (``PreTrainedModel`` in eval mode on the requested device
and dtype, fast tokenizer), and every source fails in its own way — a missing folder, a hub id with downloads
off or a gated licence, a GGUF file that is not there. Each failure becomes one :class:`TeacherLoadError`
line that says what to do.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
from pathlib import Path
from typing import Iterator

from ..errors import MergekdError
from .gguf_cache import cache_folder, discard, ensure_cache, plain_copy_of
from .options import TeacherOptions
from .vocab_cache import load_byte_vocab, save_byte_vocab


class TeacherLoadError(MergekdError, OSError):
    """A teacher's files cannot be found or read; the message says how to get them."""


class MissingTeacherError(TeacherLoadError, FileNotFoundError):
    """A teacher's files are not on this machine."""


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' own progress bars and info logs while loading (mergekd draws its own progress)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _no_gguf_tqdm() -> Iterator[None]:
    """transformers' GGUF dequantiser draws a plain tqdm bar that ignores its logging switches; silence it."""
    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    if original is None:
        yield
        return
    gguf_utils.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def load_tokenizer_from(source: str, where: str, revision: str | None = None):
    """A tokenizer from an offline tokenizer name (``mergekd vocab`` names), a local folder or a hub id."""
    from transformers import AutoTokenizer

    from ..assets import TOKENIZERS, load_tokenizer

    if source in TOKENIZERS:
        return load_tokenizer(source)
    try:
        return AutoTokenizer.from_pretrained(source, revision=revision)
    except OSError as exc:
        raise _explain(exc, source, where, what="tokenizer") from None


def load_hf(location: str, options: TeacherOptions, where: str, tokenizer: str | None = None):
    """``(model, tokenizer, None)`` from a ``save_pretrained`` folder or a hub id."""
    from transformers import AutoModelForCausalLM

    path = Path(location).expanduser()
    source = str(path) if path.exists() else location
    if path.exists() and not (path / "config.json").is_file():
        raise TeacherLoadError(f"{where}: {path} has no config.json; it is not a save_pretrained model folder")
    with quiet_transformers():
        tok = load_tokenizer_from(tokenizer or source, where, options.revision)
        try:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=options.torch_dtype(),
                                                         revision=options.revision)
        except OSError as exc:
            raise _explain(exc, source, where, what="model") from None
    return model.to(options.device).eval(), tok, None


def _explain(exc: Exception, source: str, where: str, what: str) -> TeacherLoadError:
    from huggingface_hub.constants import is_offline_mode

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if Path(source).expanduser().exists():
        return TeacherLoadError(f"{where}: cannot load the {what} in {source}: {first}")
    if is_offline_mode():
        return MissingTeacherError(
            f"{where}: hub {what} {source!r} is not in the local Hugging Face cache and hub downloads are off "
            f"(HF_HUB_OFFLINE=1). Download it where the hub is reachable (hf download {source}) or point "
            "hf: at a local save_pretrained folder."
        )
    return MissingTeacherError(
        f"{where}: could not fetch hub {what} {source!r}: {first}. Check the id; gated models (Llama, Gemma, "
        "Mistral) need their licence accepted on huggingface.co and `hf auth login`."
    )


def load_gguf(path: Path, options: TeacherOptions, where: str, cache_name: str, tokenizer: str | None = None):
    """``(model, tokenizer, vocab)`` from a GGUF file, dequantised to float32 once and cached as safetensors
    together with the tokenizer and its ByteVocab (``vocab`` is None when the cache is off).

    ``tokenizer`` (an offline tokenizer name or folder) replaces the GGUF's own tokenizer when the same one is
    already converted elsewhere (the built-in teachers reuse ``mergekd.assets``' converted tokenizers).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..bytes import ByteVocab

    if not path.is_file():
        raise MissingTeacherError(f"{where}: GGUF file {path} does not exist")

    def read_gguf():
        with quiet_transformers(), _no_gguf_tqdm():
            return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)

    def read_tokenizer():
        if tokenizer is not None:
            return load_tokenizer_from(tokenizer, where)
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)

    if not options.cache:
        model = read_gguf()
        return model.to(dtype=options.torch_dtype(), device=options.device).eval(), read_tokenizer(), None

    def build(folder: Path) -> None:
        tok = read_tokenizer()
        vocab = ByteVocab.from_tokenizer(tok, name=cache_name)  # a lossy tokenizer fails before minutes of work
        quantised = read_gguf()
        plain = plain_copy_of(quantised)
        del quantised
        gc.collect()
        with quiet_transformers():
            plain.save_pretrained(str(folder))
        del plain
        gc.collect()
        tok.save_pretrained(str(folder))
        save_byte_vocab(vocab, folder)

    stat = path.stat()
    source = {"gguf": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    target = cache_folder(cache_name, path)
    folder, built = ensure_cache(target, build, source)
    try:
        model, tok, vocab = read_folder(folder, options)
    except Exception as exc:  # noqa: BLE001 - classified below: damaged files are rebuilt, anything else raised
        if built or not files_damaged(folder):
            # intact files that do not load (e.g. another transformers version): keep the ~1 GB copy, say why
            raise TeacherLoadError(f"{where}: the safetensors copy {folder} is intact but does not load "
                                   f"({type(exc).__name__}: {exc}); if transformers changed since it was written, "
                                   f"move that folder away and rerun to rebuild it") from exc
        # complete by its marker but unreadable (bytes damaged in place, sizes intact): rebuild once
        discard(folder)
        folder, _ = ensure_cache(target, build, source)
        model, tok, vocab = read_folder(folder, options)
    return model.to(options.device).eval(), tok, vocab


def files_damaged(folder: Path) -> bool:
    """Whether a cache folder's own files are broken (weights that safetensors cannot parse, tokenizer or config
    JSON that does not parse), as opposed to intact files the installed libraries fail to load. Only damaged
    copies are discarded: an hour of dequantising is not thrown away over a library version."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        for weights in folder.glob("*.safetensors"):
            load_file(str(weights))  # header, offsets and every tensor's byte range
        for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
            if (folder / name).is_file():
                json.loads((folder / name).read_text(encoding="utf-8"))
    except (SafetensorError, OSError, ValueError, UnicodeDecodeError):
        return True
    return False


def load_folder(folder: Path, options: TeacherOptions):
    """``(model, tokenizer, vocab)`` from a cache folder, on the requested device (``vocab`` None if there is
    no valid saved ByteVocab)."""
    model, tok, vocab = read_folder(folder, options)
    return model.to(options.device).eval(), tok, vocab


def read_folder(folder: Path, options: TeacherOptions):
    """Read a cache folder on the CPU: ``(model, tokenizer, vocab or None)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=options.torch_dtype())
    return model.eval(), tok, load_byte_vocab(folder, tok)
