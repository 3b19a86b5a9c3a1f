"""Report emitters for ``tunescope analyze``: small functions over one list of
findings and the run summaries (:func:`tunescope.detectors.engine.run_summaries`).

Formats:

- ``text``: per run a one-line summary, then its findings with suggestions.
- ``json``: the stable contract (``JSON_VERSION``)::

    {"version": 1,
     "findings": [{"run", "rank" (null: all ranks), "detector", "name", "severity",
                   "step_start", "step_end", "message", "suggestion", "evidence",
                   "explain" (the command that prints the detector's documentation)}],
     "runs": [{"run", "name", "format", "status", "world_size", "steps_logged",
               "last_step", "total_steps", "last_loss",
               "findings": {"info", "warning", "error"}, "worst",
               "limits" (what the log cannot show, one sentence each),
               "interventions" (what the training guard did: step, action, finding)}]}

  Fields are only ever added, never renamed or removed, within a version.
- ``github``: GitHub Actions workflow commands (``::error title=...::...``).
- ``junit``: JUnit XML, one test suite per run, one failing test case per
  warning or error (info findings pass), one passing case for a clean run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from tunescope.findings import Finding, Severity
from tunescope.words import count

JSON_VERSION = 1
FORMATS = ("text", "json", "github", "junit")


def _steps(f: Finding) -> str:
    if f.step_start is None:
        return "whole run"
    if f.step_end is None or f.step_end == f.step_start:
        return f"step {f.step_start}"
    return f"steps {f.step_start}-{f.step_end}"


def _where(f: Finding) -> str:
    rank = "all ranks" if f.rank is None else f"rank {f.rank}"
    return f"{_steps(f)}, {rank}"


def _run_line(run: dict[str, Any]) -> str:
    steps = run.get("steps_logged") or 0
    total = run.get("total_steps")
    last = run.get("last_step")
    if total:
        progress = f"step {last if last is not None else 0}/{total}"
    else:
        progress = f"last step {last}" if last is not None else "no steps"
    counts = run.get("findings", {})
    n = sum(counts.values())
    parts = [f"{counts[s]} {s}" for s in ("error", "warning", "info") if counts.get(s)]
    found = "no findings" if n == 0 else f"{count(n, 'finding')} ({', '.join(parts)})"
    status = run.get("status") or "unknown"
    return f"{run['run']}: {status}, {progress}, {count(steps, 'step')} logged, {found}"


def text(findings: list[Finding], runs: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    by_run: dict[str, list[Finding]] = {}
    for f in findings:
        by_run.setdefault(f.run, []).append(f)
    names = [r["run"] for r in runs] + [r for r in by_run if r not in {x["run"] for x in runs}]
    summaries = {r["run"]: r for r in runs}
    for name in names:
        run = summaries.get(name, {"run": name, "findings": {}})
        if name not in summaries:
            mine = by_run.get(name, [])
            run["findings"] = {s.value: sum(f.severity is s for f in mine) for s in Severity}
        lines.append(_run_line(run))
        if run.get("limits"):
            lines.append("  cannot show: " + "; ".join(run["limits"]))
        if run.get("interventions"):
            acts = [
                f"{i['action']} at step {i['step']} ({i['finding']})"
                + (
                    f" to {i['checkpoint']}"
                    if i["action"] == "rewind" and "checkpoint" in i
                    else ""
                )
                for i in run["interventions"]
            ]
            lines.append("  guard: " + "; ".join(acts))
        for f in by_run.get(name, []):
            lines.append(f"  {f.severity.value.upper():<7} {f.detector} {f.name} ({_where(f)})")
            pad = "\n" + " " * 10
            lines.append(" " * 10 + f.message.replace("\n", pad))
            lines.append(" " * 10 + "fix: " + f.suggestion.replace("\n", pad))
            lines.append(f"          more: tunescope explain {f.detector}")
    total = len(findings)
    counts = {s: sum(f.severity is s for f in findings) for s in Severity}
    tail = ", ".join(f"{counts[s]} {s.value}" for s in reversed(list(Severity)) if counts[s])
    lines.append(
        f"{count(len(names), 'run')} analysed, {count(total, 'finding')}"
        + (f" ({tail})" if tail else "")
    )
    return "\n".join(lines) + "\n"


def as_json(findings: list[Finding], runs: list[dict[str, Any]]) -> str:
    doc = {
        "version": JSON_VERSION,
        "findings": [_finding_dict(f) for f in findings],
        "runs": runs,
    }
    return json.dumps(doc, indent=2, sort_keys=False, allow_nan=False) + "\n"


def _finding_dict(f: Finding) -> dict[str, Any]:
    d = f.to_dict()
    return {
        "run": d["run"],
        "rank": d["rank"],
        "detector": d["detector"],
        "name": d["name"],
        "severity": d["severity"],
        "step_start": d["step_start"],
        "step_end": d["step_end"],
        "message": d["message"],
        "suggestion": d["suggestion"],
        "evidence": d["evidence"],
        "explain": f"tunescope explain {f.detector}",
    }


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def github(findings: list[Finding], runs: list[dict[str, Any]]) -> str:
    level = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}
    lines = []
    for f in findings:
        title = _gh_prop(f"{f.detector} {f.name} in {f.run} ({_where(f)})")
        body = _gh_data(f"{f.message}\nFix: {f.suggestion}\nMore: tunescope explain {f.detector}")
        lines.append(f"::{level[f.severity]} title={title}::{body}")
    clean = [r["run"] for r in runs if not sum(r.get("findings", {}).values())]
    if clean:
        lines.append(f"::notice title=tunescope::{_gh_data('no findings in ' + ', '.join(clean))}")
    return "\n".join(lines) + ("\n" if lines else "")


def junit(findings: list[Finding], runs: list[dict[str, Any]]) -> str:
    by_run: dict[str, list[Finding]] = {r["run"]: [] for r in runs}
    for f in findings:
        by_run.setdefault(f.run, []).append(f)
    suites = []
    total_tests = total_fail = 0
    for name, mine in by_run.items():
        cases = []
        failures = 0
        for f in mine:
            case_name = quoteattr(f"{f.detector} {f.name} ({_where(f)})")
            body = (
                f"{f.message}\nfix: {f.suggestion}\nmore: tunescope explain {f.detector}\n"
                f"evidence: {json.dumps(f.to_dict()['evidence'], sort_keys=True)}"
            )
            if f.severity is Severity.INFO:
                cases.append(
                    f"    <testcase classname={quoteattr(name)} name={case_name}>\n"
                    f"      <system-out>{escape(body)}</system-out>\n    </testcase>"
                )
                continue
            failures += 1
            cases.append(
                f"    <testcase classname={quoteattr(name)} name={case_name}>\n"
                f"      <failure type={quoteattr(f.severity.value)} "
                f"message={quoteattr(f.message)}>{escape(body)}</failure>\n    </testcase>"
            )
        if not mine:
            cases.append(f'    <testcase classname={quoteattr(name)} name="no findings"/>')
        tests = max(len(mine), 1)
        total_tests += tests
        total_fail += failures
        suites.append(
            f'  <testsuite name={quoteattr(name)} tests="{tests}" failures="{failures}" '
            f'errors="0">\n' + "\n".join(cases) + "\n  </testsuite>"
        )
    head = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<testsuites name="tunescope analyze" tests="{total_tests}" failures="{total_fail}">'
    )
    return head + "\n" + "\n".join(suites) + ("\n" if suites else "") + "</testsuites>\n"


EMITTERS: dict[str, Callable[[list[Finding], list[dict[str, Any]]], str]] = {
    "text": text,
    "json": as_json,
    "github": github,
    "junit": junit,
}


def render(fmt: str, findings: list[Finding], runs: list[dict[str, Any]]) -> str:
    try:
        emit = EMITTERS[fmt]
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}") from None
    return emit(findings, runs)
