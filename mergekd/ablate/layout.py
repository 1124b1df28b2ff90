"""Where a cell's runs live, and moving a finished run when the number of seeds changes.

One seed (the default): the run is ``OUT/cells/<id>/``, the layout of every grid from before ``seeds:``, so
their finished cells are found and skipped. Several seeds: each run is ``OUT/cells/<id>/seed-<s>/``.

Why runs are moved rather than retrained when a grid goes from one seed to several (or back): adding seeds to a
finished grid is the usual way to get intervals, and its existing run *is* one of the seeds. So the single-seed
run at ``<id>/`` moves to ``<id>/seed-<its seed>/`` (and back, with the other seeds' folders kept inside it); the
per-run rules of :mod:`mergekd.ablate.run` then skip it when its fingerprint matches. Each step is a rename within
``OUT/cells``, through a sibling ``<id>.to-seeds`` / ``<id>.from-seeds`` folder, so an interrupted move is
finished by the next run. Nothing is deleted; a name already taken gets a free ``.old-N`` one.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..io import move_aside

SEED_DIR = re.compile(r"seed-(\d+|unknown)(\.old-\d+)?$")  # a seed's run (or one moved aside) inside <id>/


def _free(path: Path) -> Path:
    """``path`` if nothing is there, else the first free ``NAME.old-N`` sibling."""
    if not path.exists() and not path.is_symlink():
        return path
    n = 1
    while path.with_name(f"{path.name}.old-{n}").exists():
        n += 1
    return path.with_name(f"{path.name}.old-{n}")


def _seed_of(folder: Path) -> int | None:
    """The seed a run folder was trained with, from its ``cell.json`` (None when it has none)."""
    try:
        return int(json.loads((folder / "cell.json").read_text())["config"]["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def arrange(root: Path, seeds: list[int], nested: bool, name: str, say) -> None:
    """Bring a cell's folder ``root`` (``OUT/cells/<id>``) to the layout of ``seeds`` before its runs start.

    ``nested``: a single-seed run found at ``root`` moves into ``root/seed-<s>/``. Not nested (one seed): a
    ``root`` holding only seed folders gets that seed's run moved up to ``root`` (the other seeds' folders stay
    inside it, so adding them back later finds them); without a run of that seed, ``root`` is moved aside whole.
    Anything else (the usual case: nothing changed) is left as it is."""
    to_seeds = root.with_name(f"{root.name}.to-seeds")
    from_seeds = root.with_name(f"{root.name}.from-seeds")
    if to_seeds.is_dir():  # a move interrupted by a kill: finish it first
        _into_seed_folder(root, to_seeds, name, say)
    if from_seeds.is_dir():
        _out_of_seed_folder(root, from_seeds, name, say)
    if not root.is_dir():
        return
    children = list(root.iterdir())
    flat = [c for c in children if not SEED_DIR.match(c.name)]
    if nested:
        if flat:
            os.replace(root, to_seeds)
            _into_seed_folder(root, to_seeds, name, say)
        return
    if flat or not children:
        return
    (seed,) = seeds
    run = root / f"seed-{seed}"
    if run.is_dir():
        os.replace(run, from_seeds)
        _out_of_seed_folder(root, from_seeds, name, say)
    else:
        aside = move_aside(root, "old")
        say(f"  {name}: {root} holds runs of other seeds only ({', '.join(sorted(c.name for c in children))}), "
            f"not seed {seed}: moved it to {aside} (kept, not deleted)")


def _into_seed_folder(root: Path, holding: Path, name: str, say) -> None:
    """``holding`` is the former ``root``: a single-seed run, maybe with seed folders inside. The seed folders go
    back to ``root``, the run becomes ``root/seed-<its seed>``."""
    root.mkdir(parents=True, exist_ok=True)
    for child in sorted(holding.iterdir()):
        if SEED_DIR.match(child.name):
            os.replace(child, _free(root / child.name))
    seed = _seed_of(holding)
    wanted = root / (f"seed-{seed}" if seed is not None else "seed-unknown")
    dest = _free(wanted)
    os.replace(holding, dest)
    taken = "" if dest == wanted else f" ({wanted} was taken; kept, not deleted)"
    say(f"  {name}: several seeds now — moved its single-seed run (seed {seed}) to {dest}{taken}")


def _out_of_seed_folder(root: Path, holding: Path, name: str, say) -> None:
    """``holding`` is the run of the one seed; what else was in ``root`` (other seeds) moves inside it, then it
    becomes ``root``."""
    others = []
    if root.is_dir():
        for child in sorted(root.iterdir()):
            os.replace(child, _free(holding / child.name))
            others.append(child.name)
        root.rmdir()
    os.replace(holding, root)
    kept = f"; the other seeds' folders ({', '.join(others)}) are kept inside it" if others else ""
    say(f"  {name}: one seed now — moved its run of seed {_seed_of(root)} to {root}{kept}")


__all__ = ["SEED_DIR", "arrange"]
