"""DistillConfig is composed of section models (run, data, student, teacher, mix, objective, optimiser,
on_policy): YAML may nest them or stay flat, with the same result; each section validates on its own."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from mergekd.distill.config import SECTIONS, DataSection, DistillConfig, RunSection, load_config
from mergekd.errors import ConfigError

FLAT = {"student": "new:llama?tokenizer=gpt2&layers=1", "data": "train.txt", "out": "runs/x", "steps": 7,
        "lr": 0.002, "batch_size": 4, "seq_bytes": 256, "teachers": ["smollm2-135m"], "mix": "linear",
        "trie_kl_weight": 3.0, "kl_weight": 0.0, "byte_ce_weight": 0.0, "device": "cpu"}
NESTED = {"run": {"out": "runs/x", "steps": 7, "device": "cpu"},
          "data": {"data": "train.txt", "seq_bytes": 256},
          "student": "new:llama?tokenizer=gpt2&layers=1",
          "teacher": {"teachers": ["smollm2-135m"]},
          "mix": "linear",
          "objective": {"trie_kl_weight": 3.0, "kl_weight": 0.0, "byte_ce_weight": 0.0},
          "optimiser": {"lr": 0.002, "batch_size": 4}}


def _load(tmp_path, mapping, **overrides):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(mapping))
    return load_config(path, overrides)


def test_every_field_is_in_exactly_one_section():
    owners = [name for model, _ in SECTIONS.values() for name in model.model_fields]
    assert sorted(owners) == sorted(DistillConfig.model_fields) and len(owners) == len(set(owners))


def test_nested_yaml_equals_flat_yaml(tmp_path):
    flat, nested = _load(tmp_path, FLAT), _load(tmp_path, NESTED)
    assert nested.model_dump() == flat.model_dump()
    assert nested.fingerprint() == flat.fingerprint()
    # the field's own mapping forms are not sections: a data source and a mixer
    mapped = _load(tmp_path, {**FLAT, "data": {"path": "d.parquet", "text_field": "body"},
                              "mix": {"name": "product", "weights": [1, 2]}})
    assert mapped.data == "d.parquet?text_field=body" and mapped.mix == {"name": "product", "weights": [1, 2]}


def test_flags_win_over_a_nested_value(tmp_path):
    assert _load(tmp_path, NESTED, lr=0.01).lr == 0.01


def test_misplaced_and_duplicated_keys_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.lr: not an option of section 'run' .*belongs to section "
                                          r"'optimiser'"):
        _load(tmp_path, {**NESTED, "run": {**NESTED["run"], "lr": 0.1}})
    with pytest.raises(ConfigError, match=r"steps: given both at the top level and in section 'run'"):
        _load(tmp_path, {**NESTED, "steps": 3})
    with pytest.raises(ConfigError) as err:  # Python callers get the same rule through the model validator
        try:
            DistillConfig(**{**{k: v for k, v in FLAT.items() if k != "lr"}, "optimiser": {"lr": 0.1, "stpes": 2}})
        except ValidationError as exc:
            from mergekd.errors import one_line

            raise one_line(exc, "config") from None
    assert "optimiser.stpes: not an option of section 'optimiser'" in str(err.value)


def test_a_section_validates_on_its_own():
    assert RunSection(out="runs/x", report_to="none").report_to == []
    with pytest.raises(ValidationError, match="unknown option 'foo'"):
        DataSection(data="train.txt?foo=1")
    with pytest.raises(ValidationError, match="seq_bytes"):
        DataSection(data="train.txt", seq_bytes=3)
