"""Packaging: every library subpackage is installed, built-in teachers are data read from teachers/*.yaml, and no
top-level ``teachers`` package lands in site-packages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+ (mergekd itself runs on 3.10)

ROOT = Path(__file__).parents[1]


def test_every_subpackage_is_listed():
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mergekd").rglob("__init__.py")}
    assert on_disk | {"mergekd._builtin_teachers"} == set(tool["packages"])
    assert tool["package-dir"] == {"mergekd._builtin_teachers": "teachers"}


def test_builtin_teachers_are_the_yaml_files():
    from mergekd.teachers import TEACHERS, registered_spec
    from mergekd.teachers.builtin import builtin_files

    files = sorted(p.stem for p in (ROOT / "teachers").glob("*.yaml"))
    assert [f.name for f in builtin_files()] == files and set(files) <= set(TEACHERS.names())
    smol = registered_spec("smollm2")  # alias from the file
    assert smol.name == "smollm2-135m" and smol.vocab_size == 49152 and smol.source == "gguf"
    assert callable(smol.location)  # asset: locations resolve only when loaded
    assert registered_spec("qwen2.5-0.5b").location == "Qwen/Qwen2.5-0.5B"
    spec = importlib.util.find_spec("teachers")
    assert spec is None or Path(spec.origin).parent == ROOT / "teachers"  # only the repo folder, never installed


def test_a_bad_teacher_file_names_the_file_and_field(tmp_path, monkeypatch):
    from mergekd.errors import ConfigError
    from mergekd.teachers import builtin

    (tmp_path / "broken.yaml").write_text("name: broken\nsource: ftp\nlocation: x\n")

    class Folder:
        def iterdir(self):
            return list(tmp_path.iterdir())

    monkeypatch.setattr(builtin.resources, "files", lambda package: Folder())
    with pytest.raises(ConfigError, match=r"broken.yaml.*source"):
        builtin.builtin_files()
