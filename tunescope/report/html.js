// tunescope report: draws the curves held in #tunescope-data with uPlot.
// Each curve is a list of min/max buckets; a bucket is drawn as a vertical
// stroke from its min to its max, so every spike stays visible.
(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("tunescope-data").textContent);
  var PALETTE = ["#1f77d0", "#e08a00", "#1b9e63", "#d43f5e", "#8a5cd6", "#00949a", "#9a9a10", "#e0661e"];
  var SHADE = { error: "rgba(255,77,77,0.22)", warning: "rgba(255,176,0,0.25)", info: "rgba(78,161,255,0.18)" };
  var charts = [];
  window.tunescopeCharts = charts; // for tests and for the console

  function colour(i) {
    if (i < PALETTE.length) return PALETTE[i];
    return "hsl(" + ((i * 137) % 360) + ",65%,45%)";
  }

  function fmt(v) {
    if (v == null) return "–";
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(3);
    return +v.toPrecision(5) + "";
  }

  // Tick labels that stay apart: 2e-5 for learning rates, 120k for steps, plain
  // numbers between, with as many digits as it takes for no two to read alike.
  var SI = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]];

  function tickLabel(v, big, small, d) {
    if (v == null) return "";
    if (v === 0) return "0";
    if (small) return v.toExponential(d);
    if (big) {
      for (var k = 0; k < SI.length; k++) {
        if (Math.abs(v) >= SI[k][0]) return +(v / SI[k][0]).toFixed(d) + SI[k][1];
      }
    }
    return +v.toFixed(d) + "";
  }

  function tickValues(u, splits, axis) {
    var max = 0, out = [];
    splits.forEach(function (v) { if (v != null && isFinite(v)) max = Math.max(max, Math.abs(v)); });
    var big = max >= 1e5, small = max !== 0 && max < 1e-2;
    for (var d = 0; d <= 10; d++) {
      out = splits.map(function (v) { return tickLabel(v, big, small, d); });
      var seen = {}, same = false;
      out.forEach(function (t) { if (t !== "" && seen[t]) same = true; seen[t] = true; });
      if (!same) break;
    }
    u.root.setAttribute(axis === 0 ? "data-x-ticks" : "data-y-ticks", out.join("|"));
    return out;
  }

  // [x, x, ...] and per series [min, max, ...]: two points per bucket.
  function interleave(chart) {
    var n = chart.x.length, xs = new Array(2 * n);
    for (var i = 0; i < n; i++) { xs[2 * i] = chart.x[i]; xs[2 * i + 1] = chart.x[i]; }
    var data = [xs];
    chart.series.forEach(function (s) {
      var ys = new Array(2 * n);
      for (var i = 0; i < n; i++) { ys[2 * i] = s.lo[i]; ys[2 * i + 1] = s.hi[i]; }
      data.push(ys);
    });
    return data;
  }

  function bucketValue(s) {
    return function (u, v, si, idx) {
      if (idx == null) return "–";
      var b = idx >> 1, lo = s.lo[b], hi = s.hi[b], out;
      if (lo == null && hi == null) out = "–";
      else if (lo === hi) out = fmt(lo);
      else out = fmt(lo) + " … " + fmt(hi);
      if (s.bad) {
        for (var k = 0; k < s.bad.length; k++) if (s.bad[k][0] === b) out += " (" + s.bad[k][1] + " NaN/Inf)";
      }
      return out;
    };
  }

  // Shade each finding's step range under the curves; remember where (CSS px).
  function shadePlugin(findings) {
    return {
      hooks: {
        drawAxes: [function (u) {
          var ctx = u.ctx, dpr = window.devicePixelRatio || 1, top = u.bbox.top, h = u.bbox.height;
          var left = u.bbox.left, right = u.bbox.left + u.bbox.width;
          u.shaded = [];
          ctx.save();
          findings.forEach(function (f) {
            var x0 = u.valToPos(f.start - 0.5, "x", true), x1 = u.valToPos(f.end + 0.5, "x", true);
            var min = 3 * dpr;
            if (x1 - x0 < min) { var c = (x0 + x1) / 2; x0 = c - min / 2; x1 = c + min / 2; }
            x0 = Math.max(x0, left); x1 = Math.min(x1, right);
            if (x1 <= x0) return;
            ctx.fillStyle = SHADE[f.severity] || SHADE.info;
            ctx.fillRect(x0, top, x1 - x0, h);
            u.shaded.push({ start: f.start, end: f.end, severity: f.severity, x0: x0 / dpr, x1: x1 / dpr });
          });
          ctx.restore();
        }],
      },
    };
  }

  // NaN/Inf buckets: a red tick at the top of the plot.
  function badPlugin(chart) {
    return {
      hooks: {
        draw: [function (u) {
          var ctx = u.ctx, dpr = window.devicePixelRatio || 1;
          ctx.save();
          ctx.fillStyle = "#d00";
          chart.series.forEach(function (s) {
            (s.bad || []).forEach(function (p) {
              var x = u.valToPos(chart.x[p[0]], "x", true);
              if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) return;
              ctx.fillRect(x - dpr, u.bbox.top, 2 * dpr, 6 * dpr);
            });
          });
          ctx.restore();
        }],
      },
    };
  }

  // Wheel zooms around the cursor; shift+wheel (or a sideways wheel) pans.
  function wheelPlugin(full) {
    return {
      hooks: {
        ready: [function (u) {
          u.over.addEventListener("wheel", function (e) {
            e.preventDefault();
            var sc = u.scales.x, lo = sc.min, hi = sc.max, w = hi - lo;
            var pan = e.shiftKey || Math.abs(e.deltaX) > Math.abs(e.deltaY);
            if (pan) {
              var d = (e.shiftKey ? e.deltaY : e.deltaX) > 0 ? w * 0.1 : -w * 0.1;
              d = Math.max(full[0] - lo, Math.min(full[1] - hi, d));
              u.setScale("x", { min: lo + d, max: hi + d });
              return;
            }
            var at = u.posToVal(e.offsetX, "x"), k = e.deltaY < 0 ? 0.75 : 1 / 0.75;
            var nlo = at - (at - lo) * k, nhi = at + (hi - at) * k;
            nlo = Math.max(full[0], nlo); nhi = Math.min(full[1], nhi);
            if (nhi - nlo < 1) return;
            u.setScale("x", { min: nlo, max: nhi });
          }, { passive: false });
        }],
      },
    };
  }

  function makeChart(el, chart, opts) {
    var group = opts.group, width = Math.max(300, el.clientWidth - 8);
    var full = [chart.x[0], chart.x[chart.x.length - 1]];
    if (full[1] <= full[0]) full = [full[0] - 1, full[0] + 1];
    var series = [{ label: "step", value: function (u, v) { return v == null ? "–" : fmt(v); } }];
    chart.series.forEach(function (s, i) {
      series.push({
        label: s.label,
        stroke: s.label === "smoothed" ? "#111" : colour(opts.colourOffset + i),
        width: s.label === "smoothed" ? 1.5 : 1,
        spanGaps: !!opts.spanGaps,
        points: { show: false },
        value: bucketValue(s),
      });
    });
    var plugins = [wheelPlugin(full), badPlugin(chart)];
    if (opts.findings && opts.findings.length) plugins.push(shadePlugin(opts.findings));
    if (opts.sync) plugins.push(syncPlugin(opts.sync));
    var u = new uPlot({
      title: chart.title,
      width: width,
      height: opts.height || 220,
      plugins: plugins,
      cursor: { drag: { x: true, y: false }, sync: group ? { key: group } : undefined },
      scales: { x: { time: false, range: function (u, lo, hi) { return [lo, hi]; } },
                y: chart.log ? { distr: 3 } : {} },
      axes: [{ label: "step", values: tickValues }, { size: 60, values: tickValues }],
      legend: { live: true },
      series: series,
    }, interleave(chart), el);
    u.full = full;
    u.chartId = chart.id;
    u.run = opts.run || null;
    u.findings = opts.findings || [];
    charts.push(u);
    return u;
  }

  // Zooming one chart of a run zooms the others.
  function syncPlugin(group) {
    return {
      hooks: {
        setScale: [function (u, key) {
          if (key !== "x" || group.busy) return;
          group.busy = true;
          var sc = u.scales.x;
          group.list.forEach(function (o) {
            if (o !== u && (o.scales.x.min !== sc.min || o.scales.x.max !== sc.max)) {
              o.setScale("x", { min: sc.min, max: sc.max });
            }
          });
          group.busy = false;
        }],
      },
    };
  }

  document.querySelectorAll("article.run").forEach(function (art) {
    var run = art.getAttribute("data-run"), info = DATA.runs[run];
    if (!info) return;
    var box = art.querySelector(".charts"), group = { list: [], busy: false };
    // Lay out every box first: a chart takes the width of its grid cell.
    var boxes = info.charts.map(function (chart) {
      var el = document.createElement("div");
      el.className = "chart-box";
      el.setAttribute("data-chart", chart.id);
      box.appendChild(el);
      return el;
    });
    info.charts.forEach(function (chart, i) {
      group.list.push(makeChart(boxes[i], chart, {
        group: "run:" + run, sync: group, findings: info.findings, run: run, colourOffset: 0,
      }));
    });
  });

  if (DATA.compare) {
    var el = document.getElementById("compare-chart");
    DATA.compare.title = "loss by run";
    DATA.compare.id = "compare";
    DATA.compare.log = DATA.compare.series.every(function (s) {
      return s.lo.every(function (v) { return v == null || v > 0; });
    });
    makeChart(el, DATA.compare, { spanGaps: true, height: 320, colourOffset: 0 });
  }

  window.addEventListener("resize", function () {
    charts.forEach(function (u) {
      var w = Math.max(300, u.root.parentNode.clientWidth - 8);  // the box, not the chart
      if (Math.abs(w - u.width) > 4) u.setSize({ width: w, height: u.height });
    });
  });

  // Sortable tables: click (or Enter on) a header.
  document.querySelectorAll("table.sortable").forEach(function (table) {
    table.querySelectorAll("th").forEach(function (th, col) {
      function sort() {
        var num = th.getAttribute("data-type") === "num";
        var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
        table.querySelectorAll("th").forEach(function (o) { o.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[col].getAttribute("data-v"), y = b.cells[col].getAttribute("data-v");
          if (num) {
            var p = x === "" ? -Infinity : parseFloat(x), q = y === "" ? -Infinity : parseFloat(y);
            return (p - q) * dir || 0;
          }
          return x.localeCompare(y) * dir;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) { if (e.key === "Enter") sort(); });
    });
  });

  // A link to a detector's documentation opens it.
  document.querySelectorAll("a.explain").forEach(function (a) {
    a.addEventListener("click", function () {
      var target = document.getElementById(a.getAttribute("href").slice(1));
      if (target) target.open = true;
    });
  });

  var only = document.getElementById("config-diff-only");
  if (only) {
    only.addEventListener("change", function () {
      document.getElementById("config-table").classList.toggle("diff-only", only.checked);
    });
  }
})();
