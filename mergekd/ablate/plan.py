"""Plan: what an ablation run will do (its cells and cache groups), shared by the runner and the reports.

Why its own module: the runner builds a plan and the reports read one; keeping the type apart keeps the two
modules from importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import AblationConfig, Cell, teacher_labels


@dataclass
class Plan:
    """What a run will do: the cells, and for each cache group (cells sharing data and chunking) its teachers."""

    config: AblationConfig
    out: Path
    cells: list[Cell]
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # cache key → {specs, cache path, sample cfg}
    cell_group: dict[str, str] = field(default_factory=dict)  # cell id → cache key
    online: list[str] = field(default_factory=list)  # teacher cells that cannot use a cache (e.g. on-policy)

    @property
    def teachers(self) -> list[str]:
        return list(dict.fromkeys(t for c in self.cells for t in c.teachers))

    @property
    def labels(self) -> dict[str, str]:
        return teacher_labels(self.teachers, self.config.labels)

    @property
    def eval_files(self) -> list[Path]:
        return list(dict.fromkeys(Path(c.config.eval_data) for c in self.cells))
