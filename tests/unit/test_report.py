"""Each report emitter against a golden file, all on one shared findings fixture.

Regenerate the golden files after an intended change with
``TUNESCOPE_UPDATE_GOLDEN=1 python -m pytest tests/unit/test_report.py`` and
review the diff.
"""

from __future__ import annotations

import json
import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunescope.findings import Finding, Severity
from tunescope.report.curves import Series
from tunescope.report.formats import (
    EMITTERS,
    mermaid_number,
    mermaid_text,
    mermaid_xychart,
    render,
)

GOLDEN = Path(__file__).parent / "golden"
SUFFIX = {
    "text": "txt",
    "json": "json",
    "github": "github.txt",
    "junit": "xml",
    "markdown": "md",
    "html": "html",
}
LINK = "https://ci.example.org/jobs/42/artifacts/report.html"


def shared_curves() -> dict[str, Series]:
    """The loss of qwen-lora-r8 (the run with an error) as 6 min/max buckets,
    one of them all NaN, one holding a NaN beside finite values."""
    nan = float("nan")
    return {
        "qwen-lora-r8": Series(
            label="loss",
            x=np.array([100.0, 500.0, 900.0, 1300.0, 1800.0, 2300.0]),
            lo=np.array([2.5, 2.1, 2.0, 1.9, 3.2, nan]),
            hi=np.array([3.1, 2.4, 6.2, 2.2, 5.9, nan]),
            bad=np.array([0.0, 0.0, 0.0, 0.0, 1.0, 40.0]),
        )
    }


def _strip_vendor(page: str) -> str:
    """The page without the inlined chart library (kept out of the golden file)."""
    return re.sub(
        r'(<script id="uplot">).*?(</script>)', r"\1/* uPlot */\2", page, count=1, flags=re.S
    )


def shared_findings() -> tuple[list[Finding], list[dict]]:
    findings = [
        Finding(
            run="qwen-lora-r8",
            detector="TS102",
            name="divergence",
            severity=Severity.ERROR,
            step_start=1840,
            step_end=2400,
            message="loss rose 31% over steps 1800-2050 after warmup (tau=0.52, p=3e-12).",
            suggestion="Rewind to a checkpoint about 100 steps before the onset, lower the "
            "learning rate 2-10x and clip gradients at 1.0.",
            rank=None,
            evidence={"rule": "trend", "tau": 0.52, "p": 3e-12, "last_loss": float("nan")},
        ),
        Finding(
            run="qwen-lora-r8",
            detector="TS101",
            name="loss-spike",
            severity=Severity.WARNING,
            step_start=912,
            step_end=913,
            message="loss rose to 3.1x its running median (6.2 vs 2.0, z=14) at step 912; "
            "back within 5% by step 915. Samples in that batch: 4411, 9023.",
            suggestion="Inspect or skip the batch at that step; clip gradients at 1.0.",
            rank=1,
            evidence={"ratio": 3.1, "sample_ids": [4411, 9023]},
        ),
        Finding(
            run="llama-full",
            detector="TS001",
            name="non-finite",
            severity=Severity.INFO,
            step_start=None,
            step_end=None,
            message='50% of rows: <grad_norm> & "loss", a: b, c\nsecond line',
            suggestion="Nothing to do (a 100% <harmless> note).",
            rank=None,
            evidence={},
        ),
    ]
    runs = [
        {
            "run": "clean-run",
            "name": "clean-run",
            "format": "native",
            "status": "completed",
            "world_size": 1,
            "steps_logged": 300,
            "last_step": 300,
            "total_steps": 300,
            "last_loss": 1.21,
            "findings": {"info": 0, "warning": 0, "error": 0},
            "worst": None,
        },
        {
            "run": "llama-full",
            "name": "llama-full",
            "format": "native",
            "status": "running",
            "world_size": 1,
            "steps_logged": 120,
            "last_step": 120,
            "total_steps": None,
            "last_loss": 2.5,
            "findings": {"info": 1, "warning": 0, "error": 0},
            "worst": "info",
        },
        {
            "run": "qwen-lora-r8",
            "name": "qwen-lora-r8",
            "format": "native",
            "status": "failed",
            "world_size": 2,
            "steps_logged": 2400,
            "last_step": 2400,
            "total_steps": 3000,
            "last_loss": 5.9,
            "findings": {"info": 0, "warning": 1, "error": 1},
            "worst": "error",
        },
    ]
    return findings, runs


@pytest.mark.parametrize("fmt", sorted(EMITTERS))
def test_emitter_matches_golden(fmt):
    findings, runs = shared_findings()
    out = render(fmt, findings, runs, curves=shared_curves(), link=LINK)
    if fmt == "html":
        out = _strip_vendor(out)
    path = GOLDEN / f"report.{SUFFIX[fmt]}"
    if os.environ.get("TUNESCOPE_UPDATE_GOLDEN"):
        path.write_text(out, encoding="utf-8")
    assert out == path.read_text(encoding="utf-8")


def test_json_contract():
    findings, runs = shared_findings()
    doc = json.loads(render("json", findings, runs))
    assert doc["version"] == 1
    keys = [
        "run",
        "rank",
        "detector",
        "name",
        "severity",
        "step_start",
        "step_end",
        "message",
        "suggestion",
        "evidence",
        "explain",
    ]
    assert all(list(f) == keys for f in doc["findings"])
    assert doc["findings"][1]["explain"] == "tunescope explain TS101"
    assert doc["findings"][0]["rank"] is None and doc["findings"][1]["rank"] == 1
    assert doc["findings"][0]["evidence"]["last_loss"] == "NaN"  # strict JSON, no NaN token
    assert [r["run"] for r in doc["runs"]] == ["clean-run", "llama-full", "qwen-lora-r8"]


def test_junit_is_valid_xml_with_failures():
    findings, runs = shared_findings()
    root = ET.fromstring(render("junit", findings, runs))
    assert root.get("failures") == "2"
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert suites["qwen-lora-r8"].get("failures") == "2"
    assert suites["clean-run"].find("testcase").get("name") == "no findings"
    assert suites["llama-full"].get("failures") == "0"  # info is not a failure


def test_github_escapes_one_line_per_finding():
    findings, runs = shared_findings()
    lines = render("github", findings, runs).splitlines()
    assert lines[0].startswith("::error title=TS102 divergence in qwen-lora-r8 (steps 1840-2400%2C")
    assert lines[1].startswith("::warning title=TS101")
    assert lines[2].startswith("::notice title=TS001 non-finite in llama-full")
    assert "%0Asecond line" in lines[2] and "50%25 of rows" in lines[2]
    assert sum(line.startswith("::") for line in lines) == len(lines) == 4


def test_text_has_run_summaries_and_fixes():
    findings, runs = shared_findings()
    out = render("text", findings, runs)
    assert (
        "qwen-lora-r8: failed, step 2400/3000, 2,400 steps logged, 2 findings (1 error, 1 warning)"
        in out
    )
    assert "clean-run: completed" in out and "no findings" in out
    assert out.count("fix: ") == 3 and "tunescope explain TS101" in out


# ---- Markdown and its Mermaid charts -------------------------------------------------

# The subset of Mermaid's xychart grammar that the generator writes (from the
# lexer of mermaid's xychart.jison: numbers have no exponent, strings no quotes).
NUM = r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)"
STR = r'"[^"\n]*"'
XYCHART = [
    re.compile(r"xychart-beta"),
    re.compile(rf"    title {STR}"),
    re.compile(rf'    x-axis "step" ({NUM}) --> ({NUM})'),
    re.compile(rf"    y-axis {STR} ({NUM}) --> ({NUM})"),
    re.compile(rf"    line \[({NUM}(?:, {NUM})*)\]"),
]


def parse_xychart(block: str) -> dict:
    """Check a chart against the grammar line by line; return its numbers."""
    lines = block.split("\n")
    assert len(lines) == len(XYCHART), lines
    groups = []
    for line, rule in zip(lines, XYCHART, strict=True):
        m = rule.fullmatch(line)
        assert m, f"not Mermaid xychart syntax: {line!r}"
        groups.append(m.groups())
    x0, x1 = map(float, groups[2])
    y0, y1 = map(float, groups[3])
    values = [float(v) for v in groups[4][0].split(", ")]
    assert x0 < x1 and y0 < y1
    assert all(y0 <= v <= y1 for v in values)
    return {"x": (x0, x1), "y": (y0, y1), "values": values}


def test_markdown_has_tables_fixes_a_parsable_chart_and_the_link():
    findings, runs = shared_findings()
    out = render("markdown", findings, runs, curves=shared_curves(), link=LINK)
    blocks = re.findall(r"```mermaid\n(.*?)\n```", out, flags=re.S)
    assert len(blocks) == 1  # only the run with an error gets a chart
    chart = parse_xychart(blocks[0])
    # min and max of each bucket in step order; the all-NaN bucket repeats the last value
    assert chart["values"] == [2.5, 3.1, 2.1, 2.4, 2.0, 6.2, 1.9, 2.2, 3.2, 5.9, 5.9, 5.9]
    assert chart["x"] == (100, 2300)
    assert "41 NaN/Inf loss value(s) are not drawn." in out
    assert "> **Fix:** Rewind to a checkpoint" in out  # each error's fix
    assert out.count("| severity | detector | where | message |") == 2  # one table per run
    assert "| qwen-lora-r8 | failed | 2400/3000 | 5.9 | 1 | 1 | 0 |" in out
    assert f"[{LINK}]({LINK})" in out
    # table cells stay one line and hold no raw HTML from the logs
    assert '&lt;grad_norm&gt; &amp; "loss", a: b, c<br>second line |' in out
    # without a link the pointer says how to make the report
    assert "`tunescope report RUNS -o report.html`" in render("markdown", findings, runs)


def test_mermaid_generator_escapes_text_and_refuses_nonfinite():
    assert mermaid_text('loss "raw"\nsmoothed') == "\"loss 'raw' smoothed\""
    with pytest.raises(ValueError):
        mermaid_number(float("nan"))
    with pytest.raises(ValueError):
        mermaid_xychart("t", (0, 1), [])
    flat = parse_xychart(mermaid_xychart("flat", (5, 5), [2.0, 2.0]))
    assert flat["x"] == (5, 6) and flat["y"][0] < 2 < flat["y"][1]


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e15, max_value=1e15))
def test_mermaid_numbers_match_the_grammar(v):
    text = mermaid_number(v)
    assert re.fullmatch(NUM, text), text
    assert math.isclose(float(text), v, rel_tol=1e-3, abs_tol=1e-300) or abs(v) < 1e-300


@given(
    st.lists(
        st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9),
        min_size=1,
        max_size=50,
    ),
    st.text(max_size=30),
)
def test_mermaid_charts_parse(values, title):
    parse_xychart(mermaid_xychart(title, (0, len(values)), values))


# ---- HTML ------------------------------------------------------------------------------


def test_html_is_one_offline_file():
    findings, runs = shared_findings()
    page = render("html", findings, runs)
    assert page.startswith("<!DOCTYPE html>")
    assert "default-src 'none'" in page  # the page may fetch nothing
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # no CDN, no remote asset
    assert "/*! https://github.com/leeoniya/uPlot (v1.6.32) */" in page  # inlined
    data = re.search(r'<script id="tunescope-data" type="application/json">(.*?)</script>',
                     page, flags=re.S).group(1)  # fmt: skip
    doc = json.loads(data)
    assert set(doc["runs"]) == {"qwen-lora-r8", "llama-full"}  # the runs with findings
    assert doc["runs"]["qwen-lora-r8"]["findings"][0] == {
        "severity": "error", "detector": "TS102", "start": 1840, "end": 2400,
    }  # fmt: skip
    assert '<details id="explain-TS102">' in page and 'href="#explain-TS102"' in page
    # text from the logs is escaped, never markup
    assert "&lt;grad_norm&gt; &amp; &quot;loss&quot;" in page and "<grad_norm>" not in page


# ---- through the CLI, on the fixture corpus ----------------------------------------------

FIXTURE_RUNS = Path(__file__).resolve().parents[2] / "fixtures" / "runs"


def test_cli_markdown_on_the_fixtures_charts_every_run_with_an_error(tmp_path, capsys):
    from tunescope.cli import main

    cache = str(tmp_path / "cache")
    code = main(["analyze", str(FIXTURE_RUNS), "--format", "markdown", "--cache-dir", cache])
    out = capsys.readouterr().out
    assert code == 1  # errors among the fixtures: the gate still works
    blocks = re.findall(r"```mermaid\n(.*?)\n```", out, flags=re.S)
    titles = [parse_xychart(b) and re.search(r'title "([^:]+):', b).group(1) for b in blocks]
    erroring = sorted(
        {m for m in re.findall(r"^\| (\S+) \| \w+ \| [\d/]* \| \S* \| ([1-9]\d*) \|", out, re.M)}
    )
    assert len(blocks) >= 4
    assert sorted(titles) == [run for run, _ in erroring]


def test_cli_report_errors_are_one_line(tmp_path, capsys):
    from tunescope.cli import main

    assert main(["report", str(tmp_path / "missing"), "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such directory" in err
    out = tmp_path / "no" / "such" / "dir" / "r.html"
    cache = str(tmp_path / "cache")
    assert main(["report", str(FIXTURE_RUNS), "-o", str(out), "--cache-dir", cache]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err


def test_one_scan_of_many_columns_buckets_as_the_plot_queries_do(tmp_path):
    from tunescope.ingest.store.database import Store
    from tunescope.report.curves import RUN_PLOTS, bucket_columns, bucket_runs, spec_source

    store = Store.open(str(FIXTURE_RUNS), str(tmp_path / "cache"))
    cur = store.cursor()
    runs = ["fault-straggler-2rank", "fault-lr-spike"]
    specs = {s.id: s for s in RUN_PLOTS}
    columns = {f"{k}:{label}": expr for k in ("mem", "lr") for label, expr in specs[k].columns}
    wide = bucket_columns(cur, runs, columns, buckets=37)
    assert sorted(wide) == [("fault-lr-spike", 0), ("fault-straggler-2rank", 0),
                            ("fault-straggler-2rank", 1)]  # fmt: skip
    mem = bucket_runs(cur, spec_source(specs["mem"], many=True), runs, buckets=37)
    lr = bucket_runs(cur, spec_source(specs["lr"], many=True), runs, buckets=37)
    for (run, rank), series in wide.items():
        ref = mem[(run, f"rank {rank}")]
        got = series["mem:mem"]
        assert len(got) == len(ref) == 37
        np.testing.assert_array_equal(got.lo, ref.lo)
        np.testing.assert_array_equal(got.hi, ref.hi)
        if rank == 0:
            np.testing.assert_array_equal(series["lr:lr"].hi, lr[(run, "lr")].hi)
    store.close()


def test_html_detectors_section_keeps_the_page_for_an_analyzers_own_id():
    """A finding from an ``--analyzer`` detector with no documentation says so in
    its place; the known detectors keep their explain text."""
    from tunescope.report.html import _detectors_section

    def finding(detector: str) -> Finding:
        return Finding(
            run="a", detector=detector, name="x", severity=Severity.WARNING,
            step_start=1, step_end=2, message="m", suggestion="s",
        )  # fmt: skip

    page = _detectors_section([finding("NAN1"), finding("TS001")])
    assert "no documentation for NAN1: unknown detector" in page
    assert 'id="explain-TS001"' in page and "TS001 non-finite" in page
