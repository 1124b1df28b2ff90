"""The CLI is generated from the config models: every option has help text, Literal fields show their choices,
and the teacher-runtime group is spelled the same on every command that runs teachers."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from mergekd.cli import app

RUNTIME = {"--teachers", "--teacher-device", "--teacher-max-length", "--teacher-batch-size", "--byte-rule"}
TEACHER_COMMANDS = ("score", "cache", "distill", "fidelity", "eval", "demo")


def _commands():
    group = typer.main.get_command(app)
    return {name: group.commands[name] for name in TEACHER_COMMANDS}


def test_teacher_runtime_options_are_the_same_everywhere():
    for name, command in _commands().items():
        spelled = {opt for param in command.params for opt in param.opts}
        assert RUNTIME <= spelled, (name, sorted(RUNTIME - spelled))
        helps = {param.help for param in command.params if set(param.opts) & RUNTIME}
        assert len(helps) == 5 or name == "distill", (name, helps)  # one wording per option (distill: its fields')


def test_distill_help_lists_every_config_field_with_help_and_choices():
    from mergekd.distill.config import DistillConfig

    command = typer.main.get_command(app).commands["distill"]
    by_name = {param.name: param for param in command.params}
    for field in DistillConfig.model_fields:
        assert field in by_name, field
        assert by_name[field].help and by_name[field].help.strip(), field
    result = CliRunner().invoke(app, ["distill", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "no|bf16|fp16|auto" in result.output and "device|swap" in result.output
    assert "--term" in result.output and "--teacher-max-length" in result.output


def test_old_spellings_still_work():
    group = typer.main.get_command(app)
    score = {opt for p in group.commands["score"].params for opt in p.opts}
    cache = {opt for p in group.commands["cache"].params for opt in p.opts}
    fidelity = {opt for p in group.commands["fidelity"].params for opt in p.opts}
    assert {"--device", "--batch-size"} <= score and {"--device", "--max-length"} <= cache
    assert "--teacher" in fidelity
