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
               "interventions" (what the training guard did: step, action, finding),
               "cause" (why a crashed run died, as TS601 names it; null otherwise),
               "group" (only for a run with siblings: the name of their group)}]}

  Fields are only ever added, never renamed or removed, within a version.
- ``github``: GitHub Actions workflow commands (``::error title=...::...``).
- ``junit``: JUnit XML, one test suite per run, one failing test case per
  warning or error (info findings pass), one passing case for a clean run.
- ``markdown``: for ``$GITHUB_STEP_SUMMARY`` and merge-request comments: a
  runs table, a findings table per run with findings, each error's message and
  fix, the loss curve of each run with an error as a Mermaid ``xychart-beta``
  (from ``curves``: min/max buckets, see :func:`markdown_curves`) and a pointer
  to the HTML report (``link``); when runs have siblings, their groups and
  each TS501 finding with its fix (:func:`~tunescope.findings.sibling_findings`).
- ``html``: the self-contained interactive report
  (:mod:`tunescope.report.html`; curves from ``collected``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from tunescope.findings import Finding, Severity, sibling_findings, status_text, where
from tunescope.words import count

JSON_VERSION = 1
FORMATS = ("text", "json", "github", "junit", "markdown", "html")
MERMAID_BUCKETS = 40  # buckets of a Markdown loss curve (two points each: min and max)


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
    status = status_text(run.get("status"), run.get("cause"))
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
            lines.append(f"  {f.severity.value.upper():<7} {f.detector} {f.name} ({where(f)})")
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
    return {**f.to_dict(), "explain": f"tunescope explain {f.detector}"}


def _gh_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _gh_prop(text: str) -> str:
    return _gh_data(text).replace(":", "%3A").replace(",", "%2C")


def github(findings: list[Finding], runs: list[dict[str, Any]]) -> str:
    level = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}
    lines = []
    for f in findings:
        title = _gh_prop(f"{f.detector} {f.name} in {f.run} ({where(f)})")
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
            case_name = quoteattr(f"{f.detector} {f.name} ({where(f)})")
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


# ---- Markdown ------------------------------------------------------------------------

_ICON = {"error": "🔴", "warning": "🟠", "info": "🔵"}


def _md_cell(text: Any) -> str:
    """Text for one line of Markdown (a table cell): no raw HTML, pipes escaped."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", "<br>")


def mermaid_text(text: str) -> str:
    """A Mermaid string: quoted, without quotes or line breaks inside (the
    grammar has no escapes)."""
    clean = " ".join(str(text).replace('"', "'").split())
    return f'"{clean}"'


def mermaid_number(v: float) -> str:
    """A number as Mermaid's xychart grammar reads it: ``[+-]?\\d+(\\.\\d+)?``,
    no exponent, 4 significant digits."""
    import numpy as np

    if not math.isfinite(v):
        raise ValueError(f"Mermaid has no token for {v!r}")
    text = np.format_float_positional(float(v), precision=4, fractional=False, trim="-")
    return "0" if text in ("-0", "+0") else text


def mermaid_xychart(
    title: str, x_range: tuple[float, float], values: list[float], y_label: str = "loss"
) -> str:
    """A Mermaid ``xychart-beta`` line chart: ``values`` spread evenly over the
    numeric x axis ``x_range``; non-finite values must be removed first."""
    if not values:
        raise ValueError("a chart needs at least one value")
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or max(abs(hi) * 0.05, 1.0)
    x0, x1 = x_range
    if x1 <= x0:
        x1 = x0 + 1
    lines = [
        "xychart-beta",
        f"    title {mermaid_text(title)}",
        f'    x-axis "step" {mermaid_number(x0)} --> {mermaid_number(x1)}',
        f"    y-axis {mermaid_text(y_label)} {mermaid_number(lo - pad)} --> "
        f"{mermaid_number(hi + pad)}",
        "    line [" + ", ".join(mermaid_number(v) for v in values) + "]",
    ]
    return "\n".join(lines)


def _curve_values(curve: Any) -> tuple[tuple[float, float], list[float], int]:
    """(x range, min and max of each bucket in step order, NaN/Inf count); a
    bucket with no finite value repeats the last finite one."""
    values: list[float] = []
    last = None
    for lo, hi in zip(curve.lo.tolist(), curve.hi.tolist(), strict=True):
        for v in (lo, hi):
            if math.isfinite(v):
                last = v
            if last is not None:
                values.append(last)
    bad = int(sum(curve.bad.tolist()))
    return (float(curve.x[0]), float(curve.x[-1])), values, bad


def markdown_curves(store: Any, findings: list[Finding]) -> dict[str, Any]:
    """The loss curve of each run with an error finding, as min/max buckets
    (:class:`~tunescope.report.curves.Series`), for :func:`markdown`."""
    from tunescope.report.curves import RUN_PLOTS, bucket_runs, spec_source

    failing = sorted({f.run for f in findings if f.severity is Severity.ERROR})
    cur = store.cursor()
    try:
        found = bucket_runs(
            cur, spec_source(RUN_PLOTS[0], many=True), failing, buckets=MERMAID_BUCKETS
        )
    finally:
        cur.close()
    return {run: s for (run, label), s in found.items() if label == "loss"}


def _siblings_md(runs: list[dict[str, Any]], findings: list[Finding]) -> list[str]:
    groups = sibling_findings(runs, findings)
    if not groups:
        return []
    out = ["", "### Siblings", ""]
    for name, members, found in groups:
        verdict = count(len(found), "TS501 finding") if found else "no run clearly worse"
        out.append(
            f"- **{_md_cell(name)}**: {count(len(members), 'run')} "
            f"({_md_cell(', '.join(members))}); {verdict}"
        )
        for f in found:
            out.append(
                f"  - {_md_cell(f.run)}: {_md_cell(f.message)} **Fix:** {_md_cell(f.suggestion)}"
            )
    return out


def markdown(
    findings: list[Finding],
    runs: list[dict[str, Any]],
    curves: dict[str, Any] | None = None,
    link: str | None = None,
) -> str:
    curves = curves or {}
    by_run: dict[str, list[Finding]] = {}
    for f in findings:
        by_run.setdefault(f.run, []).append(f)
    counts = {s: sum(f.severity is s for f in findings) for s in Severity}
    tail = ", ".join(f"{counts[s]} {s.value}" for s in reversed(list(Severity)) if counts[s])
    out = [
        f"## tunescope: {count(len(runs), 'run')}, {count(len(findings), 'finding')}"
        + (f" ({tail})" if tail else ""),
        "",
        "| run | status | steps | last loss | errors | warnings | info |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        c = r.get("findings", {})
        last, total = r.get("last_step"), r.get("total_steps")
        steps = "" if last is None else (f"{last}/{total}" if total else str(last))
        loss = r.get("last_loss")
        loss_s = "" if loss is None else (f"{loss:.4g}" if isinstance(loss, float) else str(loss))
        out.append(
            f"| {_md_cell(r['run'])} | {_md_cell(status_text(r.get('status'), r.get('cause')))} "
            f"| {steps} | "
            f"{_md_cell(loss_s)} | {c.get('error', 0)} | {c.get('warning', 0)} | "
            f"{c.get('info', 0)} |"
        )
    out += _siblings_md(runs, findings)
    summaries = {r["run"]: r for r in runs}
    names = [r["run"] for r in runs if r["run"] in by_run]
    names += [r for r in by_run if r not in summaries]
    for name in names:
        mine = by_run[name]
        run = summaries.get(name, {})
        status = status_text(run.get("status"), run.get("cause"))
        out += ["", f"### {_md_cell(name)}: {status}, "
                f"{count(len(mine), 'finding')}", ""]  # fmt: skip
        out += ["| severity | detector | where | message |", "|---|---|---|---|"]
        for f in mine:
            sev = f.severity.value
            out.append(
                f"| {_ICON[sev]} {sev} | {f.detector} {_md_cell(f.name)} | {where(f)} | "
                f"{_md_cell(f.message)} |"
            )
        for f in mine:
            if f.severity is Severity.ERROR:
                out += [
                    "",
                    f"**{f.detector} {_md_cell(f.name)}** ({where(f)}): {_md_cell(f.message)}",
                    "",
                    f"> **Fix:** {_md_cell(f.suggestion)} (`tunescope explain {f.detector}`)",
                ]
        curve = curves.get(name)
        if curve is not None and len(curve):
            x_range, values, bad = _curve_values(curve)
            if values:
                out += ["", "```mermaid"]
                out.append(
                    mermaid_xychart(f"{name}: loss, min and max per bucket", x_range, values)
                )
                out.append("```")
                if bad:
                    out.append(f"{bad} NaN/Inf loss value(s) are not drawn.")
        if run.get("limits"):
            out += ["", "Cannot show: " + _md_cell("; ".join(run["limits"]))]
    out.append("")
    if link:
        out.append(f"Interactive report with every curve: [{_md_cell(link)}]({link})")
    else:
        out.append("Interactive report with every curve: `tunescope report RUNS -o report.html`")
    return "\n".join(out) + "\n"


def html(
    findings: list[Finding],
    runs: list[dict[str, Any]],
    collected: dict[str, dict[str, Any]] | None = None,
) -> str:
    from tunescope.report.html import build

    return build(findings, runs, collected)


EMITTERS: dict[str, Callable[[list[Finding], list[dict[str, Any]]], str]] = {
    "text": text,
    "json": as_json,
    "github": github,
    "junit": junit,
    "markdown": markdown,
    "html": html,
}


def render(
    fmt: str,
    findings: list[Finding],
    runs: list[dict[str, Any]],
    *,
    curves: dict[str, Any] | None = None,
    collected: dict[str, dict[str, Any]] | None = None,
    link: str | None = None,
) -> str:
    """The report in ``fmt``. ``curves`` (Markdown: :func:`markdown_curves`),
    ``collected`` (HTML: :func:`~tunescope.report.html.collect`) and
    ``link`` (Markdown: where the HTML report is) are read from the store while
    it is open; the other formats ignore them."""
    if fmt not in EMITTERS:
        raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "markdown":
        return markdown(findings, runs, curves, link)
    if fmt == "html":
        return html(findings, runs, collected)
    return EMITTERS[fmt](findings, runs)
