"""Config validation and the `tunescope train` command's errors (no training)."""

from __future__ import annotations

import pytest

from tunescope.cli import main
from tunescope.train.faults import parse_fault
from tunescope.train.trainer import TrainConfig, load_config


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr", 0.0, "lr must be > 0"),
        ("method", "dora", "method must be one of"),
        ("batch_size", 0, "batch_size must be >= 1"),
        ("lora_dropout", 1.5, "lora_dropout must be in"),
        ("schedule", "step", "schedule must be one of"),
        ("precision", "fp8", "precision must be one of"),
        ("inject", ["lr_spike@0"], "STEP must be >= 1"),
        ("lora_target", [], "lora_target must name"),
    ],
)
def test_bad_values_raise_value_error(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_yaml_and_set_overrides_are_typed(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("lr: 2.0e-3\nlora_target: [q_proj, v_proj]\nmax_steps: 50\n")
    cfg = load_config(
        str(cfg_file),
        ["max_steps=7", "use_rslora=true", "lora_modules_to_save=embed_tokens,lm_head"],
        ["nan@3"],
    )
    assert cfg.lr == 2e-3
    assert cfg.max_steps == 7
    assert cfg.use_rslora is True
    assert cfg.lora_target == ["q_proj", "v_proj"]
    assert cfg.lora_modules_to_save == ["embed_tokens", "lm_head"]
    assert cfg.inject == ["nan@3"]


def test_config_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1\n")
    with pytest.raises(ValueError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_config(str(bad))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("learning_rate: 1e-3\n")
    with pytest.raises(ValueError, match=r"unknown\.yaml: unknown key 'learning_rate'"):
        load_config(str(unknown))
    with pytest.raises(ValueError, match=r"--set max_steps: expected an integer"):
        load_config(None, ["max_steps=ten"])
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        load_config(None, ["lr"])


def test_fault_specs_parse():
    f = parse_fault("lr_spike@120")
    assert (f.kind, f.step, f.factor) == ("lr_spike", 120, 20.0)
    assert parse_fault("lr_spike@5:3.5").factor == 3.5
    s = parse_fault("straggler:1:0.25")
    assert (s.rank, s.seconds) == (1, 0.25)
    assert parse_fault("leak:4").mb_per_step == 4.0
    assert parse_fault("warmup_noise").factor == 6.0
    assert parse_fault("freeze_adapter").to_json() == {
        "kind": "freeze_adapter",
        "spec": "freeze_adapter",
    }
    rel = parse_fault("straggler:1:x5")
    assert (rel.rank, rel.factor, rel.seconds) == (1, 5.0, None)
    slow = parse_fault("slowdown@12:x2.5")
    assert (slow.step, slow.factor) == (12, 2.5) and parse_fault("slowdown@3").factor == 3.0
    hang = parse_fault("hang@8:6:1")
    assert (hang.step, hang.seconds, hang.rank) == (8, 6.0, 1)
    assert parse_fault("hang@8:6").rank is None
    for bad in ("straggler:1:x1", "slowdown@0", "slowdown@5:x0.5", "hang@8"):
        with pytest.raises(ValueError, match="bad fault"):
            parse_fault(bad)
    for bad in ("lr_spike", "nan@x", "straggler:1", "melt@3", "leak:-1"):
        with pytest.raises(ValueError, match="bad fault"):
            parse_fault(bad)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "lr=-1"], "lr must be > 0"),
        (["--set", "bogus=1"], "--set bogus: unknown key"),
        (["--inject", "lr_spike@x"], "bad fault 'lr_spike@x'"),
    ],
)
def test_cli_reports_config_errors_without_traceback(capsys, argv, message):
    from tunescope.train.trainer import REPO

    config = str(REPO / "fixtures" / "configs" / "lora.yaml")
    assert main(["train", config, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tunescope: error: ")
    assert message in err
    assert "Traceback" not in err


def test_cli_missing_config_file(capsys):
    assert main(["train", "no-such.yaml"]) == 2
    assert "no-such.yaml: no such config file" in capsys.readouterr().err


def test_a_mistyped_yaml_key_says_what_it_meant(tmp_path):
    from tunescope.train.trainer import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: tiny-llama\nlora_rank: 8\n")
    with pytest.raises(ValueError, match=r"unknown key 'lora_rank' \(did you mean 'lora_r'\?\)"):
        load_config(str(cfg))
    with pytest.raises(ValueError, match=r"did you mean 'max_steps'"):
        load_config(None, ["max_step=5"])
