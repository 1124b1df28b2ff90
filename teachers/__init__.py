"""Built-in teacher specs: data files (one YAML per teacher), installed as mergekd._builtin_teachers and read by
mergekd.teachers.builtin. This marker makes the folder a package so the data ships with mergekd; nothing here runs."""
