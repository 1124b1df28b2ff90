"""Built-in teacher specs for mergekd (registered in ``mergekd.teachers.TEACHERS`` on import).

Why a separate top-level package: teacher specs are data that users read and copy into their own plugins;
keeping them apart from the library code makes the example obvious. ``builtin.py`` registers every entry.
"""
