"""mergekd: distil several teachers with different tokenizers into one student, through bytes."""

__version__ = "0.1.0"
