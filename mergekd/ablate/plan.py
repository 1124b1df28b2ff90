"""Plan: what an ablation run will do (its cells and cache groups), shared by the runner and the reports.

Why its own module: the runner builds a plan and the reports read one; keeping the type apart keeps the two
modules from importing each other.
"""

from __future__ import annotations

import dataclasses
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

    @property
    def seeds(self) -> list[int]:
        """The seeds every cell trains with: ``seeds:``, or else the base seed alone (every cell's seed)."""
        if self.config.seeds is not None:
            return list(self.config.seeds)
        return list(dict.fromkeys(c.config.seed for c in self.cells))

    @property
    def nested(self) -> bool:
        """Whether runs live in ``OUT/cells/<id>/seed-<s>/`` (several seeds) or in ``OUT/cells/<id>/`` (one seed:
        the layout of grids from before ``seeds:``, so their finished cells are found where they are)."""
        return len(self.seeds) > 1

    def run_folder(self, cell: Cell, seed: int) -> Path:
        root = Path(cell.config.out)
        return root / f"seed-{seed}" if self.nested else root

    def run(self, cell: Cell, seed: int) -> Cell:
        """One seed's run of a cell: the same cell with that seed and its own folder (``seed`` set, so messages
        name it, only when the grid has several seeds)."""
        config = cell.config.model_copy(update={"seed": seed, "out": self.run_folder(cell, seed)})
        return dataclasses.replace(cell, config=config, seed=seed if self.nested else None)

    def runs(self) -> list[Cell]:
        """Every (cell, seed) run, seed-major: one full pass of the grid per seed, so an interrupted grid has
        every cell (and its CE-only pair) before it has several seeds of any."""
        return [self.run(c, s) for s in self.seeds for c in self.cells]
