"""The HTML report of ``fixtures/runs`` in a real headless Chromium.

Debian's ``chromium`` package (``.ci/run`` installs it) driven by the
``playwright`` package against that system browser: no browser download. Off
CI, a machine without either skips these tests and says why; on CI
(``CI`` set) their absence is a failure.

``TUNESCOPE_UPDATE_SCREENSHOT=1`` also writes the README's screenshot
(``docs/report.png``) from the opened report.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from tunescope.cli import main

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures" / "runs"
SCREENSHOT = ROOT / "docs" / "report.png"
CHROMIUM = os.environ.get("TUNESCOPE_CHROMIUM") or shutil.which("chromium") or ""


def _need(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser tests; .ci/run installs chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("report")
    out = base / "report.html"
    code = main(["report", str(FIXTURES), "-o", str(out), "--cache-dir", str(base / "cache")])
    assert code == 0 and out.stat().st_size > 50_000
    return out


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("the playwright package is not installed (pip install -e '.[dev]')")
    if not CHROMIUM:
        _need("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


class Opened:
    """A page with the report loaded, and what it logged and requested."""

    def __init__(self, browser, path: Path) -> None:
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = path.as_uri()
        self.page.goto(self.url)
        self.page.wait_for_function("window.tunescopeCharts && window.tunescopeCharts.length > 0")

    def chart(self, run: str, chart_id: str) -> str:
        """A JS expression for one chart of one run."""
        return f"window.tunescopeCharts.find(u => u.run === {run!r} && u.chartId === {chart_id!r})"

    def js(self, expr: str):
        return self.page.evaluate(expr)


@pytest.fixture
def opened(browser, report):
    o = Opened(browser, report)
    yield o
    o.page.close()


def test_opens_without_errors_or_network(opened: Opened) -> None:
    opened.page.wait_for_timeout(300)
    assert opened.errors == []
    assert opened.requests == [opened.url]  # nothing but the file itself
    # The page forbids fetching anything, whatever a future script might try.
    csp = opened.js("document.querySelector('meta[http-equiv=Content-Security-Policy]').content")
    assert "default-src 'none'" in csp


def test_every_chart_canvas_is_drawn(opened: Opened) -> None:
    stats = opened.js(
        """window.tunescopeCharts.map(u => {
            const c = u.ctx.canvas, d = u.ctx.getImageData(0, 0, c.width, c.height).data;
            let painted = 0; const colours = new Set();
            for (let i = 0; i < d.length; i += 4) {
                if (d[i + 3] > 0) { painted++; colours.add((d[i] >> 4) + ',' + (d[i+1] >> 4) + ',' + (d[i+2] >> 4)); }
            }
            return {run: u.run, id: u.chartId, w: c.width, h: c.height, painted, colours: colours.size,
                    points: u.data[0].length};
        })"""
    )
    runs_with_findings = opened.js("document.querySelectorAll('article.run').length")
    assert runs_with_findings >= 6
    # loss, lr, grad, mem, time for every run with findings (all fixture runs log all five)
    assert len(stats) == runs_with_findings * 5 + 1  # + the comparison
    for s in stats:
        assert s["w"] > 300 and s["h"] > 100, s
        assert s["points"] > 10, s
        assert s["painted"] > 0.02 * s["w"] * s["h"], s  # curves, shades, grid, axes
        assert s["colours"] >= 3, s


def _pixel_rgba(opened: Opened, chart: str, x_css: float, y_css: float) -> list[int]:
    return opened.js(
        f"""(() => {{ const u = {chart}, r = window.devicePixelRatio || 1;
            return Array.from(u.ctx.getImageData(Math.round({x_css} * r), Math.round({y_css} * r), 1, 1).data);
        }})()"""
    )


def _expected_x(scale: dict, bbox: dict, step: float, dpr: float) -> float:
    """Where ``step`` sits in CSS px inside the canvas, from the scale alone."""
    left, width = bbox["left"] / dpr, bbox["width"] / dpr
    return left + (step - scale["min"]) / (scale["max"] - scale["min"]) * width


def _geometry(opened: Opened, chart: str) -> tuple[dict, dict, float, list[dict], list[dict]]:
    g = opened.js(
        f"""(() => {{ const u = {chart};
            return {{scale: {{min: u.scales.x.min, max: u.scales.x.max}},
                     bbox: {{left: u.bbox.left, top: u.bbox.top, width: u.bbox.width, height: u.bbox.height}},
                     dpr: window.devicePixelRatio || 1, shaded: u.shaded, findings: u.findings}}; }})()"""
    )
    return g["scale"], g["bbox"], g["dpr"], g["shaded"], g["findings"]


def test_findings_are_shaded_at_their_steps(opened: Opened) -> None:
    checked = 0
    for run in opened.js("window.tunescopeCharts.filter(u => u.run).map(u => u.run)"):
        chart = opened.chart(run, "lr")
        scale, bbox, dpr, shaded, findings = _geometry(opened, chart)
        assert len(shaded) == len(findings) > 0
        for f, s in zip(findings, shaded, strict=True):
            x0 = _expected_x(scale, bbox, f["start"] - 0.5, dpr)
            x1 = _expected_x(scale, bbox, f["end"] + 0.5, dpr)
            if x1 - x0 >= 3:  # narrower ranges are widened to 3 px around their centre
                assert s["x0"] == pytest.approx(max(x0, bbox["left"] / dpr), abs=1)
                assert s["x1"] == pytest.approx(
                    min(x1, (bbox["left"] + bbox["width"]) / dpr), abs=1
                )
            else:
                assert (s["x0"] + s["x1"]) / 2 == pytest.approx((x0 + x1) / 2, abs=1)
            checked += 1
    assert checked >= 8
    # The pixels themselves: fault-bad-batch has one warning at step 150.
    chart = opened.chart("fault-bad-batch", "mem")
    scale, bbox, dpr, shaded, findings = _geometry(opened, chart)
    assert [f["start"] for f in findings] == [150]
    x = _expected_x(scale, bbox, 150, dpr)
    top, height = bbox["top"] / dpr, bbox["height"] / dpr
    ys = [top + height * k / 10 for k in range(1, 10)]
    inside = [_pixel_rgba(opened, chart, x, y) for y in ys]
    assert sum(_is_warning_shade(p) for p in inside) >= 4, inside  # the curve crosses some
    far = _expected_x(scale, bbox, 60, dpr)
    outside = [_pixel_rgba(opened, chart, far, y) for y in ys]
    assert not any(_is_warning_shade(p) for p in outside), outside


def _is_warning_shade(p: list[int]) -> bool:
    """rgba(255, 176, 0, 0.25) on the transparent canvas, maybe under a grid line
    (darker, same hue)."""
    r, g, b, a = p
    return a > 30 and b < 40 and g > 0 and 1.3 < r / g < 1.6


def test_drag_zooms_every_chart_of_the_run_and_shades_follow(opened: Opened) -> None:
    run = "fault-lr-spike"
    loss = opened.chart(run, "loss")
    opened.page.locator(f"#run-{run} .chart-box").first.scroll_into_view_if_needed()
    opened.page.wait_for_timeout(200)  # uPlot re-reads its position after a scroll
    box = opened.js(
        f"(() => {{ const r = {loss}.over.getBoundingClientRect(); "
        "return {x: r.x, y: r.y, w: r.width, h: r.height}; })()"
    )
    full = opened.js(f"[{loss}.scales.x.min, {loss}.scales.x.max]")
    a, b = box["x"] + box["w"] * 0.3, box["x"] + box["w"] * 0.6
    want = opened.js(
        f"[{loss}.posToVal({box['w'] * 0.3}, 'x'), {loss}.posToVal({box['w'] * 0.6}, 'x')]"
    )
    mouse = opened.page.mouse
    mouse.move(a, box["y"] + box["h"] / 2)
    mouse.down()
    mouse.move((a + b) / 2, box["y"] + box["h"] / 2, steps=4)
    mouse.move(b, box["y"] + box["h"] / 2, steps=4)
    mouse.up()
    opened.page.wait_for_timeout(100)
    got = opened.js(f"[{loss}.scales.x.min, {loss}.scales.x.max]")
    span = full[1] - full[0]
    assert got[0] == pytest.approx(want[0], abs=span * 0.02)
    assert got[1] == pytest.approx(want[1], abs=span * 0.02)
    for other in ("lr", "grad", "mem", "time"):
        assert opened.js(
            f"[{opened.chart(run, other)}.scales.x.min, {opened.chart(run, other)}.scales.x.max]"
        ) == pytest.approx(got)
    # the shades are redrawn against the zoomed scale
    scale, bbox, dpr, shaded, _ = _geometry(opened, opened.chart(run, "lr"))
    div = next(s for s in shaded if s["severity"] == "error")
    x0 = _expected_x(scale, bbox, div["start"] - 0.5, dpr)
    assert div["x0"] == pytest.approx(max(x0, bbox["left"] / dpr), abs=1)
    # the wheel zooms in further around the cursor; a double click resets
    mouse.move(box["x"] + box["w"] / 2, box["y"] + box["h"] / 2)
    mouse.wheel(0, -200)
    opened.page.wait_for_timeout(100)
    wheeled = opened.js(f"[{loss}.scales.x.min, {loss}.scales.x.max]")
    assert wheeled[1] - wheeled[0] < (got[1] - got[0]) * 0.9
    # shift+wheel pans: the same width, further right
    opened.page.keyboard.down("Shift")
    mouse.wheel(0, 200)
    opened.page.keyboard.up("Shift")
    opened.page.wait_for_timeout(100)
    panned = opened.js(f"[{loss}.scales.x.min, {loss}.scales.x.max]")
    assert panned[0] > wheeled[0]
    assert panned[1] - panned[0] == pytest.approx(wheeled[1] - wheeled[0])
    mouse.dblclick(box["x"] + box["w"] / 2, box["y"] + box["h"] / 2)
    opened.page.wait_for_timeout(100)
    assert opened.js(f"[{loss}.scales.x.min, {loss}.scales.x.max]") == pytest.approx(full)
    assert opened.errors == []


def test_hover_shows_values(opened: Opened) -> None:
    run = "fault-bad-batch"
    loss = opened.chart(run, "loss")
    opened.page.locator(f"#run-{run} .chart-box").first.scroll_into_view_if_needed()
    opened.page.wait_for_timeout(200)
    legend = opened.js(
        f"Array.from({loss}.root.querySelectorAll('.u-value')).map(e => e.textContent)"
    )
    assert legend[1] == "–"  # nothing hovered yet
    # hover at step 150, where the spike is
    x = opened.js(f"{loss}.valToPos(150, 'x')")
    box = opened.js(
        f"(() => {{ const r = {loss}.over.getBoundingClientRect(); return {{x: r.x, y: r.y, h: r.height}}; }})()"
    )
    opened.page.mouse.move(box["x"] + x, box["y"] + box["h"] / 2)
    opened.page.wait_for_timeout(100)
    idx = opened.js(f"{loss}.cursor.idx")
    assert idx is not None
    legend = opened.js(
        f"Array.from({loss}.root.querySelectorAll('.u-value')).map(e => e.textContent)"
    )
    assert float(legend[0]) == pytest.approx(150, abs=2)  # the step
    assert any(ch.isdigit() for ch in legend[1])  # the loss there
    # the other charts of the run follow the cursor
    lr = opened.chart(run, "lr")
    assert opened.js(f"{lr}.cursor.idx") is not None


def test_runs_table_sorts(opened: Opened) -> None:
    header = opened.page.locator("#runs-table th", has_text="errors")
    header.click()
    first = opened.js(
        "Array.from(document.querySelectorAll('#runs-table tbody tr')).map(r => r.cells[4].textContent)"
    )
    assert first == sorted(first, key=int)
    header.click()
    again = opened.js(
        "Array.from(document.querySelectorAll('#runs-table tbody tr')).map(r => r.cells[4].textContent)"
    )
    assert again == sorted(again, key=int, reverse=True)


def test_sections_and_screenshot(opened: Opened, tmp_path: Path) -> None:
    page = opened.page
    for anchor in ("#runs", "#findings", "#compare", "#limits", "#detectors"):
        assert page.locator(anchor).count() == 1
    assert not page.locator("#explain-TS102 pre").is_visible()
    page.locator("#run-fault-lr-spike a.explain[href='#explain-TS102']").click()
    assert page.locator("#explain-TS102 pre").inner_text().startswith("TS102")
    assert (
        page.locator("#run-fault-straggler-2rank .straggler")
        .inner_text()
        .startswith("straggler: rank 1")
    )
    assert page.locator("#config-table tr.diff").count() >= 1
    section = page.locator("#run-fault-lr-spike .charts")
    section.scroll_into_view_if_needed()
    page.set_viewport_size({"width": 1000, "height": 900})
    page.wait_for_timeout(200)
    out = tmp_path / "report.png"
    section.screenshot(path=str(out))
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 700 and height > 400
    assert zlib.crc32(data) != 0
    if os.environ.get("TUNESCOPE_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(out, SCREENSHOT)


# Text that ends or hides the page's data <script> if it reaches it raw: "<!--"
# followed by "<script" keeps the parser from seeing the real "</script>", so the
# rest of the page (uPlot and the page's own script) would never run.
HOSTILE = [
    "<!--<script>",
    "</script><script>window.pwned = 1</script>",
    "<img src=x onerror='window.pwned = 2'>",
    "a&amp;b \u2028\u2029 ]]> -->",
]
# A folder name cannot hold "/": the run ids are the hostile texts without it.
HOSTILE_RUNS = ["<!--<script>x", "<img src=x onerror='window.pwned=3'>&"]


def _hostile_copy(src: Path, dest: Path, run: str) -> None:
    """A fixture run renamed ``run``, with hostile config keys and values and a
    hostile metric name on every step."""
    import json

    lines = []
    for raw in src.read_text(encoding="utf-8").splitlines():
        obj = json.loads(raw)
        obj["run"] = run
        if obj.get("kind") == "run_start":
            obj["config"] = {**obj.get("config", {}), **{h: h for h in HOSTILE}}
            obj["model"] = HOSTILE[0]
        if obj.get("kind") == "step":
            obj[HOSTILE[0]] = 1.0
        lines.append(json.dumps(obj))
    dest.mkdir(parents=True)
    (dest / "rank-0.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory) -> Path:
    from tunescope.detectors.engine import run_summaries
    from tunescope.findings import Finding, Severity
    from tunescope.ingest.store.database import Store
    from tunescope.report.html import build, collect, stored_findings

    base = tmp_path_factory.mktemp("hostile")
    runs_dir, cache = base / "runs", base / "cache"
    for name, run in zip(("fault-lr-spike", "fault-bad-batch"), HOSTILE_RUNS, strict=True):
        _hostile_copy(FIXTURES / name / "events" / "rank-0.jsonl", runs_dir / run / "events", run)
    # The detectors judge and store their findings, then hostile ones are added.
    assert main(["analyze", str(runs_dir), "--cache-dir", str(cache), "--exit-zero"]) == 0
    store = Store.open(runs_dir, cache_dir=cache)
    findings = stored_findings(store, HOSTILE_RUNS)
    assert {f.run for f in findings} == set(HOSTILE_RUNS)
    findings += [
        Finding(
            run=run,
            detector="TS101",  # ids are the registry's; every other field is hostile
            name=h,
            severity=Severity.WARNING,
            step_start=40,
            step_end=60,
            message=h,
            suggestion=h,
            evidence={h: h},
        )
        for run in HOSTILE_RUNS
        for h in HOSTILE
    ]
    runs = run_summaries(store, findings, HOSTILE_RUNS)
    page = build(findings, runs, collect(store, findings, runs), title=HOSTILE[0])
    out = base / "report.html"
    out.write_text(page, encoding="utf-8")
    return out


def test_hostile_names_are_shown_as_text_and_every_chart_is_drawn(browser, hostile_report) -> None:
    o = Opened(browser, hostile_report)
    try:
        o.page.wait_for_timeout(300)
        assert o.js("window.pwned") is None  # no hostile text ran as script
        assert o.errors == []
        articles = o.js("document.querySelectorAll('article.run').length")
        assert articles == len(HOSTILE_RUNS)
        drawn = o.js("window.tunescopeCharts.length")
        assert drawn == articles * 5 + 1  # every run's five charts and the comparison
        assert o.js("document.querySelectorAll('canvas').length") >= drawn
        # The names arrive in the page as the text they were.
        runs = o.js(
            "Object.keys(JSON.parse(document.getElementById('tunescope-data').textContent).runs)"
        )
        assert sorted(runs) == sorted(HOSTILE_RUNS)
        body = o.page.locator("body").inner_text()
        for h in HOSTILE[:3]:
            assert h in body
    finally:
        o.page.close()
    # Nothing in the embedded data can start or end markup.
    text = hostile_report.read_text(encoding="utf-8")
    start = text.index('<script id="tunescope-data" type="application/json">')
    data = text[text.index(">", start) + 1 :]
    data = data[: data.index("</script>")]
    assert not {"<", ">", "&", "\u2028", "\u2029"} & set(data)


def _scaled_lr_run(root: Path, peak: float) -> str:
    """fault-nan with its learning rate rescaled to peak at ``peak``: a typical fine-tuning rate."""
    import json

    src = FIXTURES / "fault-nan" / "events" / "rank-0.jsonl"
    lines = src.read_text().splitlines()
    top = max(json.loads(x).get("lr") or 0.0 for x in lines if '"kind":"step"' in x)
    out = []
    for line in lines:
        rec = json.loads(line)
        if rec.get("kind") == "step" and isinstance(rec.get("lr"), float | int):
            rec["lr"] = rec["lr"] / top * peak
        out.append(json.dumps(rec))
    events = root / "small-lr" / "events"
    events.mkdir(parents=True)
    (events / "rank-0.jsonl").write_text("\n".join(out) + "\n")
    return "small-lr"


def test_small_learning_rate_axis_reads_distinct_nonzero_ticks(browser, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    run = _scaled_lr_run(runs, 2e-5)
    out = tmp_path / "report.html"
    code = main(["report", str(runs), "-o", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    o = Opened(browser, out)
    try:
        root = o.chart(run, "lr") + ".root"
        o.page.wait_for_function(f"{root}.getAttribute('data-y-ticks')")
        y = o.js(f"{root}.getAttribute('data-y-ticks')").split("|")
        x = o.js(f"{root}.getAttribute('data-x-ticks')").split("|")
        labels = [t for t in y if t]
        assert len(labels) >= 3, y
        assert len(set(labels)) == len(labels), y  # no two ticks read alike
        nonzero = [t for t in labels if t != "0"]
        assert len(nonzero) >= 2, y
        assert all(0 < abs(float(t)) <= 1e-4 for t in nonzero), y  # 2e-5 reads as 2e-5, not 0
        assert len(set(x)) == len(x) and x[-1] != "0", x
        assert o.errors == []
    finally:
        o.page.close()
