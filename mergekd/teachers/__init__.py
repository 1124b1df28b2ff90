"""Teachers: specs, the registry, loaders (folder, hub, GGUF with a safetensors cache) and the adapter.

    from mergekd.teachers import load_teacher
    with load_teacher("smollm2-135m") as teacher:          # or "hf:PATH_OR_ID", "gguf:FILE?dtype=bfloat16"
        targets = teacher.byte_targets(["Some text.", "More text."])   # list[ByteTargets]

Built-in teachers are data: one YAML file each in the repository's ``teachers/`` folder (read by
:mod:`mergekd.teachers.builtin`); plugins register more through the entry-point group ``mergekd.teachers`` (see
:mod:`mergekd.teachers.registry`).
"""

from .adapter import Teacher, check_loadable, load_teacher
from .loaders import MissingTeacherError, TeacherLoadError
from .options import TeacherOptions
from .registry import TEACHERS, ResolvedTeacher, all_specs, list_specs, registered_spec, resolve_teacher
from .spec import TeacherSpec, hub_cached, packages_installed

__all__ = [
    "TEACHERS", "MissingTeacherError", "ResolvedTeacher", "Teacher", "TeacherLoadError", "TeacherOptions",
    "TeacherSpec", "all_specs", "check_loadable", "hub_cached", "list_specs", "load_teacher", "packages_installed",
    "registered_spec", "resolve_teacher",
]

from .builtin import register_builtins  # noqa: E402

register_builtins(TEACHERS)
