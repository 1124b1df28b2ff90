"""A converted, plain-safetensors copy of a GGUF teacher, written atomically and checked before every use.

Why: transformers dequantises GGUF tensors in Python on every load (measured on a 2-core CPU: SmolLM2-135M
≈ 22 s, Gemma-3-270m ≈ 50 s, plus ≈ 30 s to convert Gemma's 262k-entry tokenizer from GGUF). The float32
weights saved as safetensors, with the tokenizer and its ByteVocab, reload in 2–6 s.

Layout: ``$MERGEKD_CACHE/teachers/<name>-<key>/`` where ``key`` hashes the GGUF file's resolved path, size and
modification time (a replaced file gets a new folder) and the cache format. The folder is built in a temporary
sibling and renamed into place, and it is trusted only if its marker file ``mergekd-cache.json`` (written last,
inside the temporary folder) lists every file with its exact size. A folder that fails the check — killed
copy, truncated file, edited marker — is moved aside and rebuilt, never half-used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

from ..assets import cache_dir
from ..io import atomic_folder

MARKER = "mergekd-cache.json"
CACHE_FORMAT = 2  # 2: the folder also holds the tokenizer's ByteVocab


def cache_key(gguf_path: Path | str) -> str:
    """Short hash of (resolved path, size, mtime, format): cheap to compute, changes when the file does."""
    path = Path(gguf_path).resolve()
    st = path.stat()
    raw = f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0format={CACHE_FORMAT}"
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:16]


def slug(name: str) -> str:
    """A file-system-safe folder prefix from a teacher name (``gguf:/a/b.gguf`` → ``gguf-a-b.gguf``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "teacher"


def teachers_cache_root() -> Path:
    return cache_dir() / "teachers"


def cache_folder(name: str, gguf_path: Path | str) -> Path:
    return teachers_cache_root() / f"{slug(name)}-{cache_key(gguf_path)}"


def existing_caches(name: str) -> list[Path]:
    """Complete cache folders already built for teacher ``name`` (any GGUF version), for ``teachers show``."""
    root = teachers_cache_root()
    if not root.is_dir():
        return []
    prefix = slug(name) + "-"
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and p.name.startswith(prefix) and re.fullmatch(r"[0-9a-f]{16}", p.name[len(prefix):])
                  and is_complete(p))


def _file_sizes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER}


def write_marker(folder: Path, source: dict) -> None:
    """Record every file and its size; written last, so its presence means the build finished."""
    files = _file_sizes(folder)
    if not files:
        raise OSError(f"cache build wrote no files into {folder}")
    marker = {"format": CACHE_FORMAT, "source": source, "files": files, "created": time.time()}
    tmp = folder / (MARKER + ".partial")
    tmp.write_text(json.dumps(marker, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, folder / MARKER)


def is_complete(folder: Path) -> bool:
    """True only if the marker parses, has our format, and every listed file exists with its recorded size."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        if marker.get("format") != CACHE_FORMAT:
            return False
        files = marker["files"]
        if not isinstance(files, dict) or not files:
            return False
        return all((folder / name).is_file() and (folder / name).stat().st_size == int(size)
                   for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def discard(folder: Path) -> None:
    """Move a bad cache folder aside (atomic), then delete it; a concurrent reader never sees a half-deleted one."""
    if not folder.exists():
        return
    trash = folder.with_name(f"{folder.name}.discard-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.replace(folder, trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


STALE_SECONDS = 3600.0  # a temporary build folder untouched this long belongs to a killed process


def sweep_stale(target: Path, max_age: float = STALE_SECONDS) -> None:
    """Delete temporary/discarded siblings of ``target`` left by killed processes (never a live build)."""
    if not target.parent.is_dir():
        return
    now = time.time()
    for p in target.parent.glob(target.name + ".*"):
        if (".tmp-" in p.name or ".discard-" in p.name) and p.is_dir():
            try:
                if now - p.stat().st_mtime > max_age:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass


def ensure_cache(target: Path, build: Callable[[Path], None], source: dict) -> tuple[Path, bool]:
    """Return ``(target, built)``: ``target`` if it is complete, else build it atomically first.

    ``build(tmp)`` writes the folder's files into an empty temporary directory. If another process finishes
    the same cache first, its copy is kept and ours is thrown away.
    """
    if is_complete(target):
        return target, False
    discard(target)
    sweep_stale(target)
    with atomic_folder(target, replace=False) as tmp:  # another process that finishes first keeps its copy
        build(tmp)
        write_marker(tmp, source)
    if not is_complete(target):
        raise OSError(f"{target} appeared while this process built it and is incomplete; rerun to rebuild it")
    return target, True


def plain_copy_of(model):
    """A GGUF-loaded model cannot ``save_pretrained`` (its config carries the GGUF quantisation config): build
    the same architecture from a clean config and load the dequantised weights into it."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    return plain.eval()
