"""Every real log in ``fixtures/real`` and ``fixtures/real-holdout`` says where
it came from: each run dir has a row in its folder's ``PROVENANCE.md`` naming
each of its files, and an entry in ``LABELS.json``; every licence named is
permissive (MIT, Apache-2.0, BSD 2/3-clause, CC-BY). The first table of
``fixtures/real/PROVENANCE.md`` states one licence for all its rows."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
FOLDERS = [FIXTURES / "real", FIXTURES / "real-holdout"]
PERMISSIVE = {"MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "CC-BY-4.0", "CC-BY-3.0"}
ROW = re.compile(r"^\| ([\w.+-]+) \| (.+?) \| (.+?) \| (.+) \|$")
LICENCE = re.compile(r"\(([^()]*)\)\s*$")


def _tables(text: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """(the prose before each table, its rows as (run dir, file, source))."""
    out: list[tuple[str, list[tuple[str, str, str]]]] = []
    prose: list[str] = []
    rows: list[tuple[str, str, str]] | None = None
    for line in text.splitlines():
        m = ROW.match(line)
        if m and m.group(1) != "run dir":
            if rows is None:
                rows = []
                out.append((" ".join(prose), rows))
                prose = []
            rows.append((m.group(1), m.group(2), m.group(3)))
        elif line.startswith("|"):
            continue
        else:
            rows = None
            prose.append(line)
    return out


def _licence(source: str, prose: str) -> str | None:
    m = LICENCE.search(source)
    if m:
        return m.group(1).split(";")[0].strip()
    m = re.search(r"the first table: all ([\w.-]+)", prose)
    return m.group(1) if m else None


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_run_dir_has_provenance_and_labels(folder):
    tables = _tables((folder / "PROVENANCE.md").read_text())
    rows = [r for _, rs in tables for r in rs]
    labels = json.loads((folder / "LABELS.json").read_text())["runs"]
    dirs = {p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert dirs == set(labels), (
        f"run dirs without labels or labels without run dirs: {dirs ^ set(labels)}"
    )
    assert dirs == {r for r, _, _ in rows}, (
        f"run dirs without a provenance row: {dirs ^ {r for r, _, _ in rows}}"
    )
    for run, name, _ in rows:
        if name in ("same file", "same"):
            continue
        path = folder / run / name
        assert path.is_file() or list((folder / run).rglob(Path(name).name)), (
            f"{run}: no file {name}"
        )


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_licence_named_is_permissive(folder):
    for prose, rows in _tables((folder / "PROVENANCE.md").read_text()):
        for run, name, source in rows:
            lic = _licence(source, prose)
            assert lic in PERMISSIVE, (
                f"{folder.name}/{run} {name}: licence {lic!r} is not permissive"
            )


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_every_label_describes_its_log(folder):
    for run, lab in json.loads((folder / "LABELS.json").read_text())["runs"].items():
        assert isinstance(lab.get("has_loss"), bool), f"{run}: has_loss"
        assert lab.get("shape") and lab.get("trainer"), f"{run}: shape and trainer"
        death = lab.get("death")
        if death is not None:
            assert set(death) == {"cause", "step", "line"}, f"{run}: death keys"
            assert any(f["detector"] == "TS601" for f in lab["faults"]), (
                f"{run}: death without TS601"
            )
        if lab["healthy"]:
            errors = [f for f in lab["faults"] if f.get("min_severity") == "error"]
            assert not errors, f"{run}: labelled healthy with a fault that must be an error"


def test_no_log_file_is_over_three_megabytes():
    for folder in FOLDERS:
        for p in folder.rglob("*"):
            if ".tunescope" in p.parts:
                continue
            if p.is_file() and p.name not in ("LABELS.json", "PROVENANCE.md"):
                assert p.stat().st_size < 3_200_000, f"{p}: {p.stat().st_size} bytes"
