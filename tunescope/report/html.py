"""The HTML report: one self-contained file with interactive curves.

``collect(store, findings, runs)`` reads what the page draws while a store is
open (downsampled curves, per-rank time grids, configs); ``build(findings,
runs, collected)`` writes the page from one or more such collections (one per
runs root). The page holds:

- a sortable summary table of the runs;
- for each run with findings: its curves (loss raw and smoothed on a log
  scale, lr, grad norms, memory and compute time per rank) with every finding
  shaded, the findings with message, suggestion, evidence and the detector's
  ``explain`` text, and the compute-time heatmap by rank and step window;
- the runs' loss curves overlaid and their configs side by side;
- what each log cannot show (the run summaries' ``limits``).

Curves are min/max buckets computed in DuckDB
(:func:`tunescope.report.curves.bucket_runs`), so no spike is lost and a
100k-step run costs the same bytes as a 1k-step one. The chart library
(uPlot, vendored in ``vendor/`` with its licence and version) and the page's
own script and styles are inlined: the file opens offline, from disk, and a
Content-Security-Policy forbids it to fetch anything.
"""

from __future__ import annotations

import html
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from tunescope.detectors.scans.siblings import diff_keys
from tunescope.files import write_output
from tunescope.findings import Finding, Severity, jsonable, sibling_findings, status_text, where
from tunescope.numbers import cell
from tunescope.report.curves import (
    SCALE,
    colour_for,
    others_median,
)
from tunescope.report.html_data import collect, compare
from tunescope.version import __version__

CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"


def vendor_version() -> str:
    """``uplot 1.6.32``: the vendored chart library and its version."""
    return _asset("vendor/VERSION").strip()


def _asset(name: str) -> str:
    return resources.files("tunescope.report").joinpath(name).read_text(encoding="utf-8")


# ---- reading the store -----------------------------------------------------------------


def _esc(text: Any) -> str:
    return html.escape("" if text is None else str(text))


def _slug(run: str) -> str:
    return "run-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in run)


def _sort_value(v: Any) -> str:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return repr(float(v)) if math.isfinite(float(v)) else "inf"
    return _esc(v)


def _summary_table(runs: list[dict[str, Any]], with_findings: set[str]) -> str:
    head = [
        ("run", "text"),
        ("status", "text"),
        ("steps", "num"),
        ("last loss", "num"),
        ("errors", "num"),
        ("warnings", "num"),
        ("info", "num"),
    ]
    rows = []
    for r in runs:
        c = r.get("findings", {})
        name = _esc(r["run"])
        link = f'<a href="#{_slug(r["run"])}">{name}</a>' if r["run"] in with_findings else name
        last, total = r.get("last_step"), r.get("total_steps")
        steps = f"{cell(last)}/{total}" if total else cell(last)
        cells = [
            (r["run"], link),
            (r.get("status") or "", f'<span class="st-{_esc(r.get("status"))}">'
             f"{_esc(status_text(r.get('status'), r.get('cause')))}</span>"),
            (last if last is not None else -1, steps),
            (r.get("last_loss"), cell(r.get("last_loss"))),
            (c.get("error", 0), str(c.get("error", 0))),
            (c.get("warning", 0), str(c.get("warning", 0))),
            (c.get("info", 0), str(c.get("info", 0))),
        ]  # fmt: skip
        worst = r.get("worst") or "none"
        tds = "".join(f'<td data-v="{_sort_value(v)}">{shown}</td>' for v, shown in cells)
        rows.append(f'<tr class="worst-{_esc(worst)}">{tds}</tr>')
    ths = "".join(f'<th data-type="{kind}" tabindex="0">{label}</th>' for label, kind in head)
    return (
        f'<table id="runs-table" class="sortable"><thead><tr>{ths}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _finding_html(f: Finding, i: int) -> str:
    evidence = json.dumps(jsonable(f.evidence), indent=1, sort_keys=True)
    return (
        f'<li class="finding sev-{f.severity.value}" data-finding="{i}">'
        f'<div class="f-head"><span class="badge {f.severity.value}">'
        f"{f.severity.value}</span> <b>{_esc(f.detector)} {_esc(f.name)}</b> "
        f'<span class="dim">{_esc(where(f))}</span></div>'
        f'<p class="msg">{_esc(f.message)}</p>'
        f'<p class="fix"><b>Fix:</b> {_esc(f.suggestion)}</p>'
        f"<details><summary>evidence</summary><pre>{_esc(evidence)}</pre></details>"
        f'<a class="explain" href="#explain-{_esc(f.detector)}">what {_esc(f.detector)} '
        "flags and why (tunescope explain)</a></li>"
    )


_SCALE_INDEX = {colour: i for i, (_, colour) in enumerate(SCALE)}


def _scale_css() -> str:
    return "".join(f".heatmap td.h{i} {{ background: {c}; }}" for i, (_, c) in enumerate(SCALE))


def _rank_html(grid: Any) -> str:
    if not grid or not grid[0]:
        return '<p class="dim">no compute or step times logged for this run</p>'
    ranks, bounds, cells, metric = grid
    rows = []
    means = []
    for row in cells:
        vals = [v for v in row if v is not None]
        means.append(sum(vals) / len(vals) if vals else None)
    worst: tuple[int, float] | None = None
    for i, rank in enumerate(ranks):
        tds = []
        for w, v in enumerate(cells[i]):
            med = others_median([r[w] for r in cells], i)
            if v is None or not med:
                tds.append('<td class="empty"></td>')
                continue
            tds.append(f'<td class="h{_SCALE_INDEX[colour_for(v / med)]}" title="{v:.3g}s"></td>')
        mean, overall = means[i], others_median(means, i)
        ratio = mean / overall if mean is not None and overall else None
        if ratio is not None and (worst is None or ratio > worst[1]):
            worst = (rank, ratio)
        tail = f"{mean:.3f}s {ratio:.2f}x" if ratio is not None else ""
        rows.append(f'<tr><th>rank {rank}</th>{"".join(tds)}<td class="sum">{tail}</td></tr>')
    if worst and len(ranks) > 1 and worst[1] >= 1.15:
        verdict = (
            f'<p class="straggler">straggler: rank {worst[0]} takes {worst[1]:.2f}x the '
            f"other ranks' median {metric}</p>"
        )
    elif len(ranks) > 1:
        verdict = '<p class="dim">no straggler: ranks are within 15% of each other</p>'
    else:
        verdict = '<p class="dim">one rank: nothing to compare</p>'
    return (
        f'<p class="dim">{_esc(metric)} by rank (rows) and step window (columns, steps '
        f"{bounds[0][0]}–{bounds[-1][1]}), coloured by time / the median of the other ranks "
        f'in that window</p><table class="heatmap">{"".join(rows)}</table>{verdict}'
    )


def _config_table(runs: list[str], configs: dict[str, dict[str, Any]]) -> str:
    keys = sorted({k for r in runs for k in configs.get(r, {})})
    if not keys:
        return '<p class="dim">no run logged its config</p>'
    head = "".join(f"<th>{_esc(r)}</th>" for r in runs)
    rows = []
    differ = set(diff_keys({r: configs.get(r, {}) for r in runs}))
    for k in keys:
        vals = [configs.get(r, {}).get(k) for r in runs]
        shown = [json.dumps(jsonable(v)) if v is not None else "" for v in vals]
        differs = k in differ
        tds = "".join(f"<td>{_esc(s)}</td>" for s in shown)
        rows.append(f'<tr class="{"diff" if differs else "same"}"><th>{_esc(k)}</th>{tds}</tr>')
    n = sum('class="diff"' in r for r in rows)
    return (
        f'<p class="dim">{n} of {len(keys)} config keys differ (highlighted). '
        '<label><input type="checkbox" id="config-diff-only"> only the differences</label></p>'
        f'<div class="scroll"><table id="config-table"><thead><tr><th>key</th>{head}</tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def build(
    findings: list[Finding],
    runs: list[dict[str, Any]],
    collected: dict[str, dict[str, Any]] | None = None,
    *,
    title: str = "tunescope report",
) -> str:
    """The whole page as one string."""
    collected = collected or {}
    by_run: dict[str, list[Finding]] = {}
    for f in findings:
        by_run.setdefault(f.run, []).append(f)
    order = [r["run"] for r in runs]
    summaries = {r["run"]: r for r in runs}
    data: dict[str, Any] = {"runs": {}, "compare": compare(collected)}
    parts = [
        _header(title, runs, findings),
        '<section id="runs"><h2>Runs</h2>',
        _summary_table(runs, set(by_run)),
        "</section>",
        '<section id="findings"><h2>Runs with findings</h2>',
    ]
    if not by_run:
        parts.append('<p class="dim">no findings</p>')
    for run in [r for r in order if r in by_run] + [r for r in by_run if r not in summaries]:
        info = collected.get(run, {})
        data["runs"][run] = _run_data(info, by_run[run])
        parts.append(_run_article(run, by_run[run], info, summaries.get(run, {})))
    parts.append("</section>")
    parts.append(_compare_section(order, collected, bool(data["compare"]), runs, findings))
    parts.append(_limits_section(runs))
    parts.append(_detectors_section(findings))
    return _page(title, parts, data)


def _header(title: str, runs: list[dict[str, Any]], findings: list[Finding]) -> str:
    counts = {s: sum(f.severity is s for f in findings) for s in Severity}
    return (
        f"<header><h1>{_esc(title)}</h1><p>{len(runs)} run(s), {len(findings)} finding(s): "
        f"{counts[Severity.ERROR]} error, {counts[Severity.WARNING]} warning, "
        f"{counts[Severity.INFO]} info. "
        f'<span class="dim">tunescope {__version__}, charts by {_esc(vendor_version())}. '
        "Drag to zoom, wheel to zoom, shift+wheel to pan, double-click to reset; "
        "hover for values.</span></p>"
        '<nav><a href="#runs">Runs</a> <a href="#findings">Runs with findings</a> '
        '<a href="#compare">Compare</a> <a href="#limits">What logs cannot show</a> '
        '<a href="#detectors">Detectors</a></nav></header>'
    )


def _run_data(info: dict[str, Any], mine: list[Finding]) -> dict[str, Any]:
    """What the page's script draws for one run: its charts and the step
    ranges of its findings."""
    return {
        "charts": info.get("charts", []),
        "findings": [
            {
                "severity": f.severity.value,
                "detector": f.detector,
                "start": f.step_start,
                "end": f.step_end if f.step_end is not None else f.step_start,
            }
            for f in mine
            if f.step_start is not None
        ],
    }


def _run_article(
    run: str, mine: list[Finding], info: dict[str, Any], summary: dict[str, Any]
) -> str:
    """One run with findings: its status, what its log cannot show, the
    findings, a place for its charts and the rank heatmap."""
    limits = summary.get("limits") or []
    return (
        f'<article class="run" id="{_slug(run)}" data-run="{_esc(run)}">'
        f'<h3>{_esc(run)} <span class="st-{_esc(summary.get("status"))}">'
        f"{_esc(status_text(summary['status'], summary.get('cause')) if summary.get('status') else '')}"
        "</span></h3>"
        + (f'<p class="limits">cannot show: {_esc("; ".join(limits))}</p>' if limits else "")
        + f'<ol class="findings">{"".join(_finding_html(f, i) for i, f in enumerate(mine))}'
        "</ol>"
        '<div class="charts"></div>'
        f'<h4>Ranks</h4><div class="ranks">{_rank_html(info.get("ranks"))}</div>'
        "</article>"
    )


def _compare_section(
    order: list[str],
    collected: dict[str, dict[str, Any]],
    has_curves: bool,
    runs: list[dict[str, Any]],
    findings: list[Finding],
) -> str:
    parts = ['<section id="compare"><h2>Compare</h2>']
    if has_curves:
        parts.append('<p class="dim">loss of every run on one step axis</p>')
        parts.append('<div id="compare-chart" class="chart-box"></div>')
    else:
        parts.append('<p class="dim">no loss curves to compare</p>')
    siblings = _siblings_html(runs, findings)
    if siblings:
        parts.append(siblings)
    parts.append("<h4>Config</h4>")
    parts.append(_config_table(order, {r: collected.get(r, {}).get("config", {}) for r in order}))
    parts.append("</section>")
    return "\n".join(parts)


def _siblings_html(runs: list[dict[str, Any]], findings: list[Finding]) -> str:
    """The sibling groups and what TS501 found in each ('' when no run has siblings)."""
    groups = sibling_findings(runs, findings)
    if not groups:
        return ""
    parts = ['<h4>Siblings</h4><ul class="siblings">']
    for name, members, found in groups:
        items = "".join(
            f"<li><b>{_esc(f.run)}</b>: {_esc(f.message)} <i>Fix:</i> {_esc(f.suggestion)}</li>"
            for f in found
        )
        verdict = f"{len(found)} TS501 finding(s)" if found else "no run clearly worse"
        parts.append(
            f"<li><b>{_esc(name)}</b>: {len(members)} runs ({_esc(', '.join(members))}); "
            f"{verdict}" + (f"<ul>{items}</ul>" if items else "") + "</li>"
        )
    parts.append("</ul>")
    return "".join(parts)


def _limits_section(runs: list[dict[str, Any]]) -> str:
    lim_rows = "".join(
        f"<tr><th>{_esc(r['run'])}</th><td>"
        + ("<br>".join(_esc(x) for x in r.get("limits") or []) or "nothing: every signal logged")
        + "</td></tr>"
        for r in runs
    )
    return (
        '<section id="limits"><h2>What each log cannot show</h2>\n'
        f'<table class="limits-table">{lim_rows}</table></section>'
    )


def _detectors_section(findings: list[Finding]) -> str:
    """The ``explain`` text of each detector that found something."""
    from tunescope.detectors.selection import get_detector
    from tunescope.errors import UsageError
    from tunescope.report.explain import explain_text

    parts = ['<section id="detectors"><h2>Detectors</h2>']
    for det_id in sorted({f.detector for f in findings}):
        try:
            text = explain_text(get_detector(det_id))
        except UsageError as e:  # an analyzer's own detector id: say so, keep the page
            text = f"no documentation for {det_id}: {e}"
        parts.append(
            f'<details id="explain-{_esc(det_id)}"><summary>{_esc(det_id)}</summary>'
            f"<pre>{_esc(text)}</pre></details>"
        )
    parts.append("</section>")
    return "\n".join(parts)


# Inside a <script> element the HTML parser looks for "</script" and, after
# "<!--", for "<script" too (which hides the real end tag and swallows the rest
# of the page): no "<" may appear raw. ">" and "&" go too, and U+2028/U+2029,
# which end a line in older JavaScript. Each becomes a JSON \u escape, so the
# text that JSON.parse returns is unchanged.
_SCRIPT_UNSAFE = str.maketrans({c: f"\\u{ord(c):04x}" for c in ("<", ">", "&", "\u2028", "\u2029")})


def script_json(data: Any) -> str:
    """``data`` as JSON that is safe to inline in a ``<script>`` element."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).translate(_SCRIPT_UNSAFE)


def _page(title: str, parts: list[str], data: dict[str, Any]) -> str:
    """The document around the sections: the inlined styles, data and scripts."""
    payload = script_json(data)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title>"
        f"<style>{_asset('vendor/uplot.min.css')}</style>"
        f"<style>{_asset('html.css')}{_scale_css()}</style></head><body>"
        + "\n".join(parts)
        + f'\n<script id="tunescope-data" type="application/json">{payload}</script>'
        + f'\n<script id="uplot">{_asset("vendor/uplot.min.js")}</script>'
        + f"\n<script>{_asset('html.js')}</script>\n</body></html>\n"
    )


# ---- from a store's stored findings (the TUI's key) ------------------------------------


def stored_findings(store: Any, run_ids: list[str]) -> list[Finding]:
    """The findings the store holds for ``run_ids`` (the last analysis), in
    report order."""
    from tunescope.detectors.engine import sort_findings

    cur = store.cursor()
    try:
        rows = cur.execute(
            "SELECT run_id, rank, detector, name, severity, step_start, step_end, message, "
            "suggestion, evidence::VARCHAR FROM findings WHERE list_contains($1, run_id)",
            [list(run_ids)],
        ).fetchall()
    finally:
        cur.close()
    out = []
    for run, rank, det, name, sev, a, b, message, suggestion, evidence in rows:
        try:
            ev = json.loads(evidence) if evidence else {}
        except ValueError:
            ev = {"raw": evidence}
        out.append(
            Finding(
                run=run,
                detector=det,
                name=name,
                severity=Severity.parse(sev or "info"),
                step_start=a,
                step_end=b,
                message=message or "",
                suggestion=suggestion or "",
                rank=rank,
                evidence=ev if isinstance(ev, dict) else {"value": ev},
            )
        )
    return sort_findings(out)


def default_path(run_ids: list[str], folder: str | None = None) -> Path:
    """``tunescope-report-RUN.html`` for one run, ``tunescope-report-N-runs.html``
    for several, in ``folder`` (default: the working directory)."""
    name = _slug(run_ids[0])[4:] if len(run_ids) == 1 else f"{len(run_ids)}-runs"
    return Path(folder or ".") / f"tunescope-report-{name}.html"


def write_report(store: Any, run_ids: list[str], path: str | Path) -> Path:
    """Write the report of ``run_ids`` from the store's stored findings."""
    from tunescope.detectors.engine import run_summaries

    findings = stored_findings(store, run_ids)
    runs = run_summaries(store, findings, run_ids)
    page = build(findings, runs, collect(store, findings, runs))
    path = Path(path)
    write_output(path, page)
    return path
