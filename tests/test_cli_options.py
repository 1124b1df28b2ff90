"""The CLI is generated from the options models: every command's options are its models' fields, every option has
help text, Literal fields show their choices, bool options are bare flags, and the teacher-runtime group is spelled
the same on every command that runs teachers."""

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


def _registered():
    """Every registered command as "name" or "group name" → its click command (groups' subcommands included)."""
    out = {}
    for name, command in typer.main.get_command(app).commands.items():
        subs = command.commands.items() if hasattr(command, "commands") else [("", command)]
        out.update({f"{name} {sub}".strip(): cmd for sub, cmd in subs})
    return out


def _models():
    """Each command's options model(s): every option of every command is a field of one of these."""
    from mergekd.commands.ablate_cmd import AblateOptions
    from mergekd.commands.cache_cmd import CacheOptions
    from mergekd.commands.demo_cmd import DemoOptions
    from mergekd.commands.distill_cmd import DistillRunOptions
    from mergekd.commands.eval_cmd import EvalOptions
    from mergekd.commands.fidelity_cmd import FidelityOptions
    from mergekd.commands.normalize_cmd import NormalizeOptions
    from mergekd.commands.teachers import ScoreOptions, ShowOptions
    from mergekd.commands.vocab_cmd import VocabOptions
    from mergekd.distill.config import DistillConfig
    from mergekd.teachers.runtime import TeacherRuntime

    return {"vocab": [VocabOptions], "distill": [DistillConfig, DistillRunOptions],
            "eval": [EvalOptions, TeacherRuntime], "cache": [CacheOptions, TeacherRuntime],
            "fidelity": [FidelityOptions, TeacherRuntime], "demo": [DemoOptions, TeacherRuntime],
            "ablate": [AblateOptions], "normalize": [NormalizeOptions], "score": [ScoreOptions, TeacherRuntime],
            "teachers show": [ShowOptions], "teachers list": []}


def test_every_command_is_generated_from_its_options_models():
    commands, models = _registered(), _models()
    assert set(commands) == set(models), "a new command needs an options model (tests/test_cli_options.py)"
    for name, command in commands.items():
        fields = {field for model in models[name] for field in model.model_fields}
        assert {param.name for param in command.params} == fields, name


def test_every_option_has_help_and_literal_fields_show_their_choices():
    import typing

    for name, command in _registered().items():
        for param in command.params:
            assert (getattr(param, "help", None) or "").strip(), (name, param.name)
        result = CliRunner().invoke(app, [*name.split(), "--help"], env={"COLUMNS": "250"}, terminal_width=250)
        assert result.exit_code == 0, (name, result.output)
        for model in _models()[name]:
            for field_name, field in model.model_fields.items():
                assert (field.description or "").strip(), (name, field_name)  # the help is more than its default
                literals = [a for a in (field.annotation, *typing.get_args(field.annotation))
                            if typing.get_origin(a) is typing.Literal]
                for literal in literals:
                    assert "|".join(typing.get_args(literal)) in result.output, (name, field_name)


def test_bool_options_are_bare_flags():
    checked = 0
    for name, command in _registered().items():
        for param in command.params:
            if not getattr(param, "is_flag", False):
                continue
            flag = param.opts[0]
            assert not param.secondary_opts, (name, flag)  # no --no-quiet: absent is the model's False
            given = command.make_context(name, [flag], resilient_parsing=True).params  # required ones not checked
            assert given[param.name] is True, (name, flag)
            assert not command.make_context(name, [], resilient_parsing=True).params[param.name], (name, flag)
            checked += 1
    assert checked >= 8  # quiet (cache, demo, distill, ablate), verify, dry-run, ce-only, force


def test_validation_errors_are_one_line_naming_the_command_and_field():
    from mergekd.errors import ConfigError

    result = CliRunner().invoke(app, ["fidelity", "--teachers", "gpt2", "--data", "x.txt", "--positions", "0"])
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == "mergekd fidelity — positions: Input should be greater than or equal to 1"
    result = CliRunner().invoke(app, ["normalize", "--data", "a.txt", "--out", "b.txt", "--form", "nfx"])
    assert isinstance(result.exception, ConfigError) and "'NFX' is not a Unicode normal form" in str(result.exception)
    result = CliRunner().invoke(app, ["eval", "--data", "held.txt"])
    assert isinstance(result.exception, ConfigError) and str(result.exception) == "--model is required"
