"""The one atomic writer (mergekd.io): permissions like a plain write, no partial files, nothing lost."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from mergekd import io


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_and_folders_get_ordinary_permissions(tmp_path, umask_022):
    io.write_atomic(tmp_path / "a.txt", "é")
    io.write_json(tmp_path / "b.json", {"x": 1})
    with io.atomic_folder(tmp_path / "final") as tmp:
        (tmp / "w.bin").write_bytes(b"1")
    assert (tmp_path / "a.txt").read_bytes() == "é".encode()
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": 1}
    assert mode(tmp_path / "a.txt") == 0o644 and mode(tmp_path / "b.json") == 0o644
    assert mode(tmp_path / "final") == 0o755  # what save_pretrained into a new folder gives, not mkdtemp's 0700
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "keep.json"
    io.write_json(target, {"v": 1})

    def boom(fh):
        fh.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.write_with(target, boom)
    with pytest.raises(ValueError):
        io.write_json(target, {"v": float("nan")})  # NaN is not JSON: refused before anything is replaced
    assert json.loads(target.read_text()) == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]


def test_folder_replace_and_keep_modes(tmp_path):
    target = tmp_path / "out"
    with io.atomic_folder(target) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError):
        with io.atomic_folder(target) as tmp:
            (tmp / "v").write_text("2")
            raise RuntimeError("killed mid-export")
    assert (target / "v").read_text() == "1"  # the failed export left the previous one in place
    with io.atomic_folder(target) as tmp:
        (tmp / "v").write_text("3")
    assert (target / "v").read_text() == "3"
    with io.atomic_folder(target, replace=False) as tmp:  # a shared cache another process finished first
        (tmp / "v").write_text("mine")
    assert (target / "v").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_move_aside_never_overwrites(tmp_path):
    for n in range(3):
        (tmp_path / "cell").mkdir()
        (tmp_path / "cell" / "model").write_text(str(n))
        aside = io.move_aside(tmp_path / "cell")
        assert aside.name == f"cell.old-{n + 1}" and (aside / "model").read_text() == str(n)
    assert io.human_size(io.folder_size(tmp_path)) == "3 B"


def test_only_mergekd_io_creates_temporary_files():
    root = Path(__file__).parents[1]
    found = subprocess.run(["git", "grep", "-l", "-e", "mkstemp", "-e", "mkdtemp", "--", "mergekd"], cwd=root,
                           capture_output=True, text=True).stdout.split()
    assert found == ["mergekd/io.py"]
