"""``bench/peers.py`` end to end on real fixture runs: series read from the
store's views, peer alerts mapped to labelled faults, tunescope's verdicts beside
them, the printed tables, and a broken LABELS.json named in one line."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "fixtures" / "runs"
KEEP = ("fault-bad-batch", "fault-nan", "healthy-lora-s0")


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


peers = _load("peers")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Three labelled fixture runs: a loss spike, a NaN loss, a healthy run."""
    root = tmp_path_factory.mktemp("peers") / "runs"
    labels = json.loads((RUNS / "LABELS.json").read_text())
    for key in KEEP:
        shutil.copytree(RUNS / key, root / key)
    (root / "LABELS.json").write_text(
        json.dumps({"runs": {k: labels["runs"][k] for k in KEEP}}, indent=1)
    )
    return root


@pytest.fixture(scope="module")
def labels(root, tmp_path_factory):
    return {lab.key: lab for lab in peers.read_root(root, tmp_path_factory.mktemp("c"), set())}


def test_peer_alerts_map_to_the_labelled_faults(labels):
    (spike,) = labels["fault-bad-batch"].faults
    assert spike.name == "TS101@150-150"
    assert spike.caught == {"lightning": 150, "trainscope": 150}
    assert spike.tunescope and spike.tunescope_step == 150
    (nan,) = labels["fault-nan"].faults
    assert nan.caught == {"lightning": 200}  # finite_only: a NaN loss is a spike
    assert nan.tunescope
    healthy = labels["healthy-lora-s0"]
    assert healthy.healthy and healthy.runs == 1 and not healthy.faults
    assert all(lab.runs == 1 for lab in labels.values())


def test_the_bench_prints_its_tables_and_reads_a_label_once(root, capsys):
    assert peers.main([str(root), str(root)]) == 0
    out = capsys.readouterr().out
    assert ": 3 new labelled run dirs" in out
    assert ": 0 new labelled run dirs" in out  # the same folder again adds nothing
    assert "3 labelled run dirs read (1 healthy), 2 labelled faults" in out
    assert "| lightning | 2/2 | 2/2 |" in out
    assert "| lightning spike | TS001, TS101, TS102 | 2/2 |" in out
    assert "caught by a peer, missed by tunescope:" in out


def test_a_broken_labels_file_is_named_in_one_line(tmp_path, capsys):
    (tmp_path / "LABELS.json").write_text('{"runs": {"a": {"faults": [{"detector": "TS101"')
    assert peers.main([str(tmp_path)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"peers: {tmp_path / 'LABELS.json'} (line 1): not JSON; fix or remove the file"
    (tmp_path / "LABELS.json").write_text('{"runs": {"a": {"faults": [{"detector": "TS101"}]}}}')
    assert peers.main([str(tmp_path)]) == 0
    assert "lacks a detector, a first_step or a last_step" in capsys.readouterr().err
