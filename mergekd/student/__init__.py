"""The student side: loading/creating the student, the byte heads trained on the teachers' mixture, export."""

from .byte_head import BYTE_HEADS, ByteHead, ParallelByteHead, RecurrentByteHead, build_byte_head
from .spec import StudentSpec, load_student, parse_student_spec

__all__ = [
    "BYTE_HEADS", "ByteHead", "ParallelByteHead", "RecurrentByteHead", "StudentSpec", "build_byte_head",
    "load_student", "parse_student_spec",
]
