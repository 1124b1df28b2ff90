"""The ``sample_bpb`` column of an ablation: teachers judge what each cell's student writes.

Why in the ablation and not only in the training loop: on-policy and off-policy cells must be compared on the
same prompts, with the same sampling settings, by the same judges. The judges are the union of the grid's
teachers pooled by one mixer, loaded once for all cells; each cell's result is saved next to it
(``cells/<id>/sample_eval.json``, keyed by the settings and the export) so a rerun does not sample again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

from ..data import chunk_text, read_documents
from ..errors import ConfigError
from .config import SampleEvalSettings


def sample_prompts(path: Path, settings: SampleEvalSettings) -> list[str]:
    """``num_prompts`` pieces of ≤ ``prompt_bytes`` bytes, evenly spaced over the file (whole characters)."""
    text = "\n\n".join(read_documents(path))  # the one reader: non-UTF-8 or malformed input is one line
    pieces = [p for p in chunk_text(text, settings.prompt_bytes) if p.strip()]
    if len(pieces) < settings.num_prompts:
        raise ConfigError(f"sample_eval.prompts: {path} holds {len(pieces)} prompts of {settings.prompt_bytes} bytes, "
                          f"fewer than num_prompts={settings.num_prompts}; use a longer text or fewer prompts")
    step = len(pieces) / settings.num_prompts
    return [pieces[int(i * step)] for i in range(settings.num_prompts)]


def _key(settings: SampleEvalSettings, prompts: list[str], teachers: list[str], export: Path) -> str:
    weights = export / "model.safetensors"
    stamp = weights.stat().st_mtime_ns if weights.is_file() else 0
    payload = json.dumps({"settings": settings.model_dump(), "prompts": prompts, "teachers": teachers,
                          "export": str(export), "weights_mtime": stamp}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class SampleJudge:
    """Loads the judging teachers on first use and scores exports; ``close()`` frees them."""

    def __init__(self, settings: SampleEvalSettings, prompts_file: Path, teacher_specs: list[str], device: str,
                 max_length: int | None, say: Callable[[str], None]):
        if not teacher_specs:
            raise ConfigError("sample_eval needs teachers to judge the samples; the grid has none")
        self.settings = settings
        self.prompts = sample_prompts(prompts_file, settings)
        self.specs = list(teacher_specs)
        self.device, self.max_length, self.say = device, max_length, say
        self._teachers: list | None = None

    def _loaded(self) -> list:
        if self._teachers is None:
            from ..teachers import load_teacher

            self.say(f"  loading sample judges: {', '.join(self.specs)}")
            self._teachers = [load_teacher(s, overrides={"device": self.device, "max_length": self.max_length})
                              for s in self.specs]
        return self._teachers

    def score(self, cell_folder: Path, export: Path) -> dict:
        """``{"sample_bpb": mixture BPB, "sample_bytes": n, ...}`` for one export (cached per settings)."""
        from ..distill.onpolicy import sample_bpb
        from ..io import write_atomic

        key = _key(self.settings, self.prompts, self.specs, export)
        saved_path = cell_folder / "sample_eval.json"
        if saved_path.is_file():
            saved = json.loads(saved_path.read_text())
            if saved.get("key") == key:
                return saved["result"]
        s = self.settings
        got = sample_bpb(export, self.prompts, self._loaded(), mix=s.mix, max_new_tokens=s.max_new_tokens,
                         temperature=s.temperature, top_p=s.top_p, seed=s.seed)
        result = {"sample_bpb": (got.get("mixture") or {}).get("bpb"), "sample_bytes": got.get("sample_bytes"),
                  "sample_teachers": {k: v.get("bpb") for k, v in got.get("teachers", {}).items()},
                  "samples": got.get("samples", [])[:4]}
        write_atomic(saved_path, json.dumps({"key": key, "result": result}, indent=1, default=str))
        return result

    def close(self) -> None:
        for t in self._teachers or []:
            t.close()
        self._teachers = None
