"""``mergekd fidelity``: the fast byte rule against exact covering byte probabilities on sampled passages."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from .options import (model_options, refuse_unused, require, runtime_overrides, teacher_runtime_options, validated,
                      with_options)


class FidelityOptions(BaseModel):
    """``mergekd fidelity``'s own options (the teacher-runtime group is shared; ``--teacher`` is kept as an old
    spelling of ``--teachers``)."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(description="UTF-8 text: .txt (one document) or .jsonl with a 'text' field")
    positions: int = Field(256, ge=1, description="byte positions to sample")
    beam: int = Field(8, ge=1, description="covering hypotheses kept per byte (exact search)")
    json_out: Path | None = Field(None, description="also write the report here")
    seed: int = Field(0, description="seed for passages and positions")
    passage_bytes: int = Field(160, ge=8, description="longest passage the exact search runs on")


@with_options(teacher_runtime_options(flags={"teachers": ("--teachers", "--teacher")}),
              model_options(FidelityOptions, flags={"json_out": ("--json",)}))
def fidelity_command(**options) -> None:
    """Fidelity of the fast byte rule: JSD/KL against exact covering byte probabilities, and BPB under each.

    Example: mergekd fidelity --teachers smollm2-135m --data botchan.txt --positions 256 --json fidelity.json
    """
    from ..data import read_documents
    from ..errors import ConfigError
    from ..fidelity import _print_report, fidelity_report, sample_passages
    from ..io import write_json
    from ..teachers import load_teacher

    (teachers,) = require(options, "teachers")
    opts = validated(FidelityOptions, options, "fidelity")
    specs = [t.strip() for t in teachers.split(",") if t.strip()]
    if len(specs) != 1:
        raise ConfigError(f"--teachers: fidelity measures one teacher at a time, got {len(specs)} ({teachers}); "
                          "run it once per teacher")
    refuse_unused(options, ("byte_rule",), "fidelity", "it compares the canonical rule with the exact covering "
                  "sum itself; set the exact search's beam with --beam")
    # the one data reader: .txt or .jsonl, non-UTF-8 or malformed input is one line naming the file
    passages = sample_passages("\n\n".join(read_documents(opts.data)), opts.positions, opts.passage_bytes, opts.seed)
    loaded = load_teacher(specs[0], overrides=runtime_overrides(options))
    report = fidelity_report(loaded.model, loaded.tokenizer, passages, positions=opts.positions, beam=opts.beam,
                             seed=opts.seed, vocab=getattr(loaded, "vocab", None))
    report["teacher"] = specs[0]
    report["data"] = str(opts.data)
    _print_report(report)
    if opts.json_out is not None:
        write_json(opts.json_out, report, indent=2)
