"""``mergekd fidelity``: the fast byte rule against exact covering byte probabilities on sampled passages."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from .options import plain, refuse_unused, require, runtime_overrides, teacher_runtime_options, with_options


@with_options(
    teacher_runtime_options(flags={"teachers": ("--teachers", "--teacher")}),
    [plain("data", None, "--data", help="UTF-8 text: .txt (one document) or .jsonl with a 'text' field",
           annotation=Optional[Path]),
     plain("positions", 256, "--positions", min=1, help="byte positions to sample"),
     plain("beam", 8, "--beam", min=1, help="covering hypotheses kept per byte (exact search)"),
     plain("json_out", None, "--json", help="also write the report here", annotation=Optional[Path]),
     plain("seed", 0, "--seed", help="seed for passages and positions"),
     plain("passage_bytes", 160, "--passage-bytes", min=8, help="longest passage the exact search runs on")])
def fidelity_command(**options) -> None:
    """Fidelity of the fast byte rule: JSD/KL against exact covering byte probabilities, and BPB under each.

    Example: mergekd fidelity --teachers smollm2-135m --data botchan.txt --positions 256 --json fidelity.json
    """
    from ..data import read_documents
    from ..errors import ConfigError
    from ..fidelity import _print_report, fidelity_report, sample_passages
    from ..io import write_json
    from ..teachers import load_teacher

    teachers, data = require(options, "teachers", "data")
    specs = [t.strip() for t in teachers.split(",") if t.strip()]
    if len(specs) != 1:
        raise ConfigError(f"--teachers: fidelity measures one teacher at a time, got {len(specs)} ({teachers}); "
                          "run it once per teacher")
    refuse_unused(options, ("byte_rule",), "fidelity", "it compares the canonical rule with the exact covering "
                  "sum itself; set the exact search's beam with --beam")
    # the one data reader: .txt or .jsonl, non-UTF-8 or malformed input is one line naming the file
    passages = sample_passages("\n\n".join(read_documents(data)), options["positions"], options["passage_bytes"],
                               options["seed"])
    loaded = load_teacher(specs[0], overrides=runtime_overrides(options))
    report = fidelity_report(loaded.model, loaded.tokenizer, passages, positions=options["positions"],
                             beam=options["beam"], seed=options["seed"], vocab=getattr(loaded, "vocab", None))
    report["teacher"] = specs[0]
    report["data"] = str(data)
    _print_report(report)
    if options["json_out"] is not None:
        write_json(options["json_out"], report, indent=2)
