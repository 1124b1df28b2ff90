"""``mergekd normalize``: write a Unicode-normalised copy of a data file (e.g. NFC for Qwen's tokenizers).

Why a command and not a silent reader option: normalising changes the bytes every target is aligned to, so it
must be visible and produce a file whose hash identifies it (caches and runs key on content). The input is never
touched; the copy is written atomically; an existing output is refused without ``--force``.
"""

from __future__ import annotations

import json
import typing
import unicodedata
from pathlib import Path
from typing import Literal, Optional

import typer
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import ConfigError
from .options import model_options, validated, with_options

Form = Literal["NFC", "NFKC", "NFD", "NFKD"]
FORMS = typing.get_args(Form)


class NormalizeOptions(BaseModel):
    """``mergekd normalize``'s options. ``--form`` is read case-insensitively (``nfc`` is NFC), so on the command
    line it is text whose choices the help shows, and a wrong form is refused here in one line."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(description="data file (.txt or .jsonl) to read; it is never modified")
    out: Path = Field(description="where to write the normalised copy")
    form: Form = Field("NFC", description="Unicode normal form (NFC: what Qwen's tokenizers produce; almost all "
                                          "real text already is NFC)")
    force: bool = Field(False, description="replace an existing --out file")

    @field_validator("form", mode="before")
    @classmethod
    def _upper(cls, value):
        if isinstance(value, str) and value.upper() not in FORMS:
            raise ValueError(f"{value.upper()!r} is not a Unicode normal form; use one of {', '.join(FORMS)}")
        return value.upper() if isinstance(value, str) else value


def normalise_value(value, form: str):
    """Every string inside a JSON value, normalised (keys and structure unchanged)."""
    if isinstance(value, str):
        return unicodedata.normalize(form, value)
    if isinstance(value, list):
        return [normalise_value(v, form) for v in value]
    if isinstance(value, dict):
        return {k: normalise_value(v, form) for k, v in value.items()}
    return value


def normalise_file(data: Path, out: Path, form: str) -> tuple[int, int]:
    """Write the normalised copy; returns (records or documents, how many changed)."""
    from ..data import jsonl_records, read_documents
    from ..io import write_atomic

    if data.suffix == ".jsonl":
        records = [record for _, record in jsonl_records(data)]
        fixed = [normalise_value(r, form) for r in records]
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fixed)
        changed = sum(a != b for a, b in zip(records, fixed))
        write_atomic(out, text)
        return len(records), changed
    (doc,) = read_documents(data)  # a .txt file is one document; non-UTF-8 is one line naming the byte
    fixed = unicodedata.normalize(form, doc)
    write_atomic(out, fixed)
    return 1, int(fixed != doc)


@with_options(model_options(NormalizeOptions, required=("data", "out"), annotations={"form": Optional[str]},
                            metavars={"form": f"[{'|'.join(FORMS)}]"}))
def normalize_command(**options) -> None:
    """Write a Unicode-normalised copy of a data file, so a tokenizer with a normaliser reproduces it exactly.

    Example: mergekd normalize --data corpus.jsonl --out corpus.nfc.jsonl --form NFC
    """
    opts = validated(NormalizeOptions, options, "normalize")
    data, out, form = opts.data, opts.out, opts.form
    if not data.is_file():
        raise ConfigError(f"--data {data} does not exist")
    if out.resolve() == data.resolve():
        raise ConfigError(f"--out {out} is the input file; write the copy elsewhere (the input is never modified)")
    if out.exists() and not opts.force:
        raise ConfigError(f"--out {out} exists; pass --force to replace it, or choose another path")
    total, changed = normalise_file(data, out, form)
    unit = "records" if data.suffix == ".jsonl" else "document"
    typer.echo(f"wrote {out}: {form} of {data} ({changed} of {total} {unit} changed)")

