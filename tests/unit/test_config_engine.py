"""Configuration files and the detector engine (selection, options, errors)."""

from __future__ import annotations

import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from detector_cases import one_rank_run, write_case

from tunescope.config import find_config, load_config, parse_config
from tunescope.detectors import engine, loss_spike, selection
from tunescope.detectors.selection import build_options
from tunescope.errors import ConfigError


def test_walks_up_to_the_nearest_config(tmp_path):
    runs = tmp_path / "a" / "b" / "runs"
    runs.mkdir(parents=True)
    (tmp_path / "a" / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.tunescope]\nfail-on = "warning"\n'
    )
    (tmp_path / "a" / "b" / "pyproject.toml").write_text('[project]\nname = "no table"\n')
    assert find_config([runs]) == tmp_path / "a" / "pyproject.toml"
    assert load_config(starts=[runs]).fail_on == "warning"
    (tmp_path / "a" / "tunescope.toml").write_text('ignore = ["TS103"]\n[TS101]\nz = 8\n')
    cfg = load_config(starts=[runs])
    assert cfg.path == tmp_path / "a" / "tunescope.toml"
    assert cfg.ignore == ["TS103"] and cfg.detectors == {"TS101": {"z": 8}}


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 1\n", "colour"),
        ('select = "TS101"\n', "select"),
        ('fail-on = "sometimes"\n', "fail-on"),
        ("[TS101]\nwindow = 2.5\n", "TS101.window"),
        ("[TS101]\nz = true\n", "TS101.z"),
        ("[TS101]\nbogus = 1\n", "TS101.bogus"),
        ("[TS102]\nwindows = [1, 2]\n", "TS102"),
        ("[TS999]\nz = 1\n", "TS999"),
        ("[TS101\n", "invalid TOML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, text, key):
    path = tmp_path / "tunescope.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        cfg = load_config(path)
        selection.check_detector_ids(cfg, selection.detector_ids())
        for d in selection.all_detectors():
            build_options(cfg, d.ID, d.Options)
    assert str(path) in str(e.value) and key in str(e.value)


def test_options_are_coerced_and_validated():
    cfg = parse_config({"TS101": {"z": 7, "z-consecutive": 5.5, "window": 50}})
    opts = build_options(cfg, "TS101", loss_spike.Options)
    assert opts.z == 7.0 and isinstance(opts.z, float) and opts.z_consecutive == 5.5
    assert opts.window == 50 and opts.min_points == loss_spike.Options().min_points


def test_a_failing_detector_is_an_error_naming_it(tmp_path, monkeypatch):
    loss = {"loss": {"start": 2.5, "end": 1.5, "tau": 5}}
    write_case({"runs": {"run": one_rank_run(20, 0, loss)}}, tmp_path / "runs")
    from tunescope.detectors import registry
    from tunescope.ingest.store.database import Store

    @dataclass
    class Options:
        pass

    def run(ctx, opts):
        raise ZeroDivisionError("boom")

    broken = types.SimpleNamespace(ID="TS999", NAME="broken", Options=Options, run=run)
    monkeypatch.setattr(registry, "DETECTORS", [*registry.DETECTORS, broken])
    store = Store.open(tmp_path / "runs", tmp_path / "cache")
    with pytest.raises(engine.DetectorError, match=r"TS999 \(broken\).*ZeroDivisionError: boom"):
        engine.analyze(store)
    assert engine.analyze(store, ignore="TS999") == []


def test_finding_rows_round_trip_through_the_store(tmp_path):
    metrics = {
        "loss": {"start": 2.5, "end": 1.5, "tau": 10, "log_noise": 0.01},
        "lr": {"peak": 1e-4, "decay": "constant"},
    }
    nan = {"set": {"from": 30, "value": "nan"}}
    write_case({"runs": {"r": one_rank_run(40, 0, metrics, loss=nan)}}, tmp_path / "runs")
    from tunescope.ingest.store.database import Store

    store = Store.open(tmp_path / "runs", tmp_path / "cache")
    found = engine.analyze(store)
    store.save_findings(engine.finding_rows(found), store.run_ids())
    rows = store.query(
        "SELECT detector, severity, step_start, evidence->>'$.first_step' AS first "
        "FROM findings ORDER BY detector"
    ).to_pylist()
    # the NaN is one incident: TS001 covers TS102's non-finite divergence
    assert [(r["detector"], r["severity"], r["step_start"]) for r in rows] == [
        ("TS001", "error", 30),
    ]
    assert rows[0]["first"] == "30"
    runs = engine.run_summaries(store, found)
    assert runs[0]["run"] == "r" and runs[0]["findings"]["error"] == 1
    alone = engine.analyze(store, select="TS102")
    assert [(f.detector, f.step_start, f.evidence["rule"]) for f in alone] == [
        ("TS102", 30, "nonfinite")
    ]


def _readme_toml() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("```toml\n[tool.tunescope]", 1)[1].split("```", 1)[0]
    return "[tool.tunescope]" + block


def test_readme_toml_block_pastes_into_tunescope_toml(tmp_path):
    path = tmp_path / "tunescope.toml"
    path.write_text(_readme_toml())
    cfg = load_config(starts=[tmp_path])
    assert cfg.path == path and cfg.fail_on == "warning" and cfg.ignore == ["TS103"]
    assert cfg.detectors["TS101"]["z"] == 8.0


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("tunescope.toml", 'ignore = ["TS103"]\n[tool.tunescope]\nfail-on = "warning"\n', "both"),
        ("tunescope.toml", "[tool.ruff]\nline-length = 99\n", "tool: unknown key"),
        ("pyproject.toml", 'ignore = ["TS103"]\n', "no [tool.tunescope] table"),
    ],
)
def test_config_errors_say_which_file_takes_which_form(tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert str(path) in msg and says in msg
    assert "a pyproject.toml takes tunescope's keys under [tool.tunescope]" in msg
    assert "a tunescope.toml takes them at the top level or under [tool.tunescope]" in msg
