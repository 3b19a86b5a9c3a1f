"""The ``tunescope`` command.

stdout is data, stderr is diagnostics. Exit codes are :class:`ExitCode`.
Heavy modules (torch, textual, scipy) are imported inside the commands that
need them, so ``tunescope --help`` and ``tunescope analyze`` start quickly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from tunescope import __version__
from tunescope.errors import ExitCode, InputError, TunescopeError, UsageError
from tunescope.opening import ingest_progress, open_store
from tunescope.progress import Progress
from tunescope.suggest import did_you_mean
from tunescope.words import count

if TYPE_CHECKING:
    import pyarrow as pa

    from tunescope.ingest.cache import IngestReport
    from tunescope.ingest.store import Store

Handler = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse with "did you mean" for mistyped commands, choices and options."""

    def error(self, message: str) -> NoReturn:
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'([^']*)'", m.group(2))
            message += did_you_mean(m.group(1), choices)
        m = re.match(r"unrecognized arguments: (\S+)", message)
        if m and m.group(1).startswith("-"):
            options = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
            message += did_you_mean(m.group(1).split("=")[0], options)
        super().error(message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # report an unknown option with the usage of the command it was given to
        chosen = _SUBPARSERS.get(getattr(args, "command", None) or "", parser)
        chosen.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "handler", None):
        parser.print_help(sys.stderr)
        return ExitCode.USAGE
    try:
        return int(args.handler(args))
    except TunescopeError as e:
        error(str(e))
        return int(e.exit_code)
    except KeyboardInterrupt:
        error("interrupted")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # The reader of our stdout went away (e.g. `| head`): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return ExitCode.OK


def error(message: str) -> None:
    print(f"tunescope: error: {message}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"tunescope: {message}", file=sys.stderr)


# ---- parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tunescope",
        description=(
            "Find out why a fine-tuning run went wrong: ingest training logs into "
            "DuckDB, detect spikes, divergence, dead adapters, stragglers and memory "
            "growth, and suggest fixes."
        ),
    )
    parser.add_argument("--version", action="version", version=f"tunescope {__version__}")
    sub = parser.add_subparsers(
        title="commands", metavar="COMMAND", dest="command", parser_class=Parser
    )
    for add in COMMANDS:
        add(sub)
    _SUBPARSERS.clear()
    _SUBPARSERS.update(sub.choices)
    return parser


_SUBPARSERS: dict[str, argparse.ArgumentParser] = {}


def _runs_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", metavar="RUNS", help="directory holding runs (at any depth)")
    _cache_arg(p)


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="detector thresholds: a tunescope.toml or pyproject.toml "
        "(default: found by walking up from RUNS)",
    )


def _cache_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where ingested segments live (default: RUNS/.tunescope, else the user cache dir)",
    )


def _add_ingest(sub: Any) -> None:
    p = sub.add_parser(
        "ingest",
        help="read new log lines into the cache and say what was read",
        description="Read every log under RUNS (only what is new since last time) "
        "and print what was read and what was skipped.",
    )
    _runs_arg(p)
    p.add_argument("--strict", action="store_true", help="exit 2 if any line or file was skipped")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also list the files no reader took, with a hint for those that look like logs",
    )
    p.set_defaults(handler=cmd_ingest)


def _add_query(sub: Any) -> None:
    p = sub.add_parser(
        "query",
        help="run read-only SQL over the runs",
        description="Ingest RUNS, then run SQL against the views runs, steps, metrics, "
        "events and findings.",
        epilog='example: tunescope query runs/ "SELECT run_id, max(loss) FROM steps GROUP BY 1"',
    )
    _runs_arg(p)
    p.add_argument("sql", metavar="SQL", help="one or more read-only SQL statements")
    p.add_argument(
        "--format",
        choices=("table", "csv", "json", "parquet"),
        help="output format (default: table on a terminal, csv otherwise)",
    )
    p.add_argument("--output", "-o", metavar="FILE", help="write the result to FILE")
    p.set_defaults(handler=cmd_query)


def _add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write all views into a self-contained DuckDB file",
        description="Ingest RUNS and write runs, steps, metrics, events and findings as "
        "tables of a new DuckDB database.",
    )
    _runs_arg(p)
    p.add_argument("--duckdb", metavar="FILE", required=True, help="database file to write")
    p.add_argument("--force", action="store_true", help="replace FILE if it exists")
    p.set_defaults(handler=cmd_export)


def _add_schema(sub: Any) -> None:
    p = sub.add_parser(
        "schema",
        help="print the event schema",
        description="Print the event schema (v1): a field table, or JSON Schema with --json.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON Schema document")
    p.set_defaults(handler=cmd_schema)


def _add_analyze(sub: Any) -> None:
    p = sub.add_parser(
        "analyze",
        help="run the detectors over runs and report findings (a CI gate)",
        description="Ingest RUNS, run the detectors, store the findings (the findings view) "
        "and report them. Exit 0: nothing at or above --fail-on; 1: findings at or above "
        "it; 2: usage, configuration or input error.",
        epilog="example: tunescope analyze runs/ --fail-on warning --format github",
    )
    p.add_argument("runs", metavar="RUNS", nargs="+", help="directories holding runs")
    p.add_argument(
        "--fail-on",
        choices=("error", "warning", "never"),
        help="lowest severity that makes the exit code 1 (default: error, or the config's)",
    )
    p.add_argument("--select", metavar="IDS", help="comma-separated detector ids or prefixes")
    p.add_argument("--ignore", metavar="IDS", help="comma-separated detector ids or prefixes")
    p.add_argument("--exit-zero", action="store_true", help="exit 0 even with findings")
    p.add_argument(
        "--format",
        choices=("text", "json", "github", "junit", "markdown", "html"),
        default="text",
        help="report format (default: text); markdown for $GITHUB_STEP_SUMMARY or a "
        "merge-request comment, html for the interactive report",
    )
    p.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE")
    p.add_argument(
        "--report-link",
        metavar="URL",
        help="markdown: where the HTML report is (e.g. the CI artifact's URL)",
    )
    _config_arg(p)
    _cache_arg(p)
    p.set_defaults(handler=cmd_analyze)


def _add_report(sub: Any) -> None:
    p = sub.add_parser(
        "report",
        help="write one self-contained HTML report of the runs (curves, findings, ranks)",
        description="Ingest RUNS, run the detectors and write one HTML file that works "
        "offline: a runs table, each run with findings with its curves (zoom, pan, hover), "
        "findings shaded, fixes and evidence, the per-rank compute-time heatmap, the runs' "
        "loss curves overlaid with their configs side by side, and what each log cannot "
        "show. Exit 0 when written, whatever the findings (use analyze to gate).",
        epilog="example: tunescope report runs/ -o report.html",
    )
    p.add_argument("runs", metavar="RUNS", nargs="+", help="directories holding runs")
    p.add_argument(
        "--output", "-o", metavar="FILE", default="report.html", help="(default: report.html)"
    )
    p.add_argument("--select", metavar="IDS", help="comma-separated detector ids or prefixes")
    p.add_argument("--ignore", metavar="IDS", help="comma-separated detector ids or prefixes")
    _config_arg(p)
    _cache_arg(p)
    p.set_defaults(handler=cmd_report)


def _add_explain(sub: Any) -> None:
    p = sub.add_parser(
        "explain",
        help="print a detector's documentation and options",
        description="Print what a detector flags, why it matters, an example, the fix and "
        "its options. Without an id, list the detectors.",
    )
    p.add_argument("detector", metavar="TSxxx", nargs="?", help="detector id, e.g. TS101")
    p.set_defaults(handler=cmd_explain)


def _add_watch(sub: Any) -> None:
    p = sub.add_parser(
        "watch",
        help="follow runs live and send new findings to webhooks",
        description="Follow the runs under RUNS as they train: ingest what is new every "
        "--interval seconds, run the detectors on the runs that changed, and send each new "
        "finding once to every --webhook (Slack, Feishu/Lark, DingTalk or signed JSON), or, "
        "without --webhook, print each alert here. "
        "What was sent is remembered in the cache dir, so a restart does not send it again; "
        "undeliverable alerts are kept in an outbox and retried. Ctrl-C stops.",
        epilog="example: tunescope watch runs/ --webhook https://hooks.slack.com/services/T/B/X",
    )
    _runs_arg(p)
    p.add_argument(
        "--webhook",
        metavar="URL",
        action="append",
        help="where alerts go (repeat for several endpoints); never printed. "
        "Without it, alerts are printed here only",
    )
    p.add_argument(
        "--format",
        choices=("auto", "slack", "feishu", "dingtalk", "json"),
        default="auto",
        help="payload format (default: auto, from the URL's host; json when unknown)",
    )
    p.add_argument(
        "--secret",
        metavar="S",
        help="signing secret (default: $TUNESCOPE_WEBHOOK_SECRET); prefer the variable, "
        "since arguments are visible to other users",
    )
    p.add_argument(
        "--interval", type=float, default=2.0, metavar="SEC", help="seconds between polls (2)"
    )
    p.add_argument(
        "--min-severity",
        default="warning",
        choices=("info", "warning", "error"),
        help="send findings at this severity and above (warning)",
    )
    p.add_argument(
        "--rate-limit",
        type=float,
        default=300.0,
        metavar="SEC",
        help="at most one alert per run and detector in this many seconds; "
        "escalations are never held (300)",
    )
    p.add_argument("--select", action="append", metavar="IDS", help="only these detectors")
    p.add_argument("--ignore", action="append", metavar="IDS", help="skip these detectors")
    p.add_argument(
        "--include-finished",
        action="store_true",
        help="also alert on runs that had ended before the watch began",
    )
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="SEC", help="HTTP timeout per attempt (10)"
    )
    p.add_argument(
        "--retries", type=int, default=3, help="retries on 5xx/429/connection errors (3)"
    )
    p.add_argument(
        "--backoff",
        type=float,
        default=1.0,
        metavar="SEC",
        help="first retry delay, doubled each retry, with jitter (1)",
    )
    p.add_argument(
        "--drain",
        type=float,
        default=5.0,
        metavar="SEC",
        help="on stop, time allowed for queued alerts before they go to the outbox (5)",
    )
    _config_arg(p)
    p.add_argument(
        "--once",
        action="store_true",
        help="poll once, deliver, and exit (exit 1 when an alert could not be delivered)",
    )
    p.add_argument(
        "--report-url",
        metavar="TEMPLATE",
        help="link each alert to a served report (tunescope report), e.g. "
        "https://reports.example.com/{run}.html#{detector}; {run}, {detector} and {step} "
        "are filled in",
    )
    p.add_argument(
        "--analyzer",
        metavar="MODULE:FUNCTION",
        help="use this analysis function instead of the built-in detectors",
    )
    p.set_defaults(handler=_run_watch)


def _run_watch(args: argparse.Namespace) -> int:
    from tunescope.watch import cmd_watch

    return cmd_watch(args)


def _add_tui(sub: Any) -> None:
    p = sub.add_parser(
        "tui",
        help="explore runs, curves, findings and fixes in the terminal",
        description="Ingest RUNS and open the terminal UI: the runs list, each run's curves "
        "and findings with their suggestions, per-rank times, comparisons and SQL. Runs "
        "that are still being written update on their own.",
    )
    _runs_arg(p)
    p.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds between live ingests of new log lines (default: 2)",
    )
    p.add_argument("--no-live", action="store_true", help="do not watch for new log lines")
    p.add_argument(
        "--no-analyze",
        action="store_true",
        help="show the stored findings only; do not run the detectors",
    )
    p.set_defaults(handler=cmd_tui)


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="fine-tune a model with the bundled trainer (LoRA, QLoRA, full, freeze)",
        description="Train from a YAML config and write tunescope event logs to "
        "OUTPUT_DIR/events/. Needs the [train] extra (torch, transformers, peft).",
        epilog="examples:\n"
        "  tunescope train fixtures/configs/lora.yaml --set max_steps=100\n"
        "  tunescope train fixtures/configs/lora.yaml --inject lr_spike@120:20\n"
        "  tunescope train fixtures/configs/lora.yaml --nproc 2 --inject straggler:1:0.05",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from tunescope.train.trainer import add_train_arguments  # torch-free module

    add_train_arguments(p)
    p.set_defaults(handler=cmd_train)


def _add_compare(sub: Any) -> None:
    from tunescope.compare_cli import add_arguments

    p = sub.add_parser(
        "compare",
        help="compare runs: config differences, loss at matched steps, what tracks the outcome",
        description="Ingest RUNS and print the settings that differ between the runs, their "
        "loss at matched steps and at the step all reached, tokens seen, time per step, peak "
        "memory, and each differing setting's rank correlation with the final loss.",
        epilog="example: tunescope compare fixtures/sweeps/grid --by lora_r,learning_rate",
    )
    add_arguments(p)
    p.set_defaults(handler=cmd_compare)


COMMANDS: list[Callable[[Any], None]] = [
    _add_ingest,
    _add_query,
    _add_export,
    _add_schema,
    _add_analyze,
    _add_report,
    _add_explain,
    _add_watch,
    _add_tui,
    _add_train,
    _add_compare,
]


def cmd_compare(args: argparse.Namespace) -> int:
    from tunescope.compare_cli import run

    return run(args)


# ---- helpers -----------------------------------------------------------------------


# ---- commands ----------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    from tunescope.ingest.store import Store

    with ingest_progress() as bar:
        store = Store.open(args.runs, args.cache_dir, progress=bar.update)
    report = store.last_report
    assert report is not None
    print(ingest_summary(report, store))
    if getattr(args, "verbose", False):
        root = Path(args.runs)
        print(f"  not read:  {count(len(report.unclaimed), 'file')} no reader took")
        for path, why in report.unclaimed:
            rel = os.path.relpath(path, root)
            print(f"    {rel}: {why}" if why else f"    {rel}")
    for p in report.problems:
        print(f"  skipped {p}", file=sys.stderr)
    if report.skipped > len(report.problems):
        unlisted = report.skipped - len(report.problems)
        print(f"  ... and {unlisted:,} more skipped, not listed", file=sys.stderr)
    if report.problems:
        warn(
            f"{count(report.skipped, 'line or file', 'lines or files')} skipped "
            "(good lines around them were kept)"
        )
        if args.strict:
            return ExitCode.USAGE
    return ExitCode.OK


def ingest_summary(report: IngestReport, store: Store) -> str:
    cur = store.cursor()
    runs, steps, metrics, events = cur.execute(
        "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM steps), "
        "(SELECT count(*) FROM metrics), (SELECT count(*) FROM events)"
    ).fetchone()
    by_status = cur.execute(
        "SELECT status, count(*) FROM runs GROUP BY status ORDER BY status"
    ).fetchall()
    status = ", ".join(f"{n} {s}" for s, n in by_status) or "none"
    new = report.rows
    lines = [
        f"{report.root}: {count(runs, 'run')} ({status}) from {count(report.sources, 'file')}",
        f"  read now:  {count(report.changed, 'changed file')}, {new['steps']:,} step rows, "
        f"{new['metrics']:,} metric points, {new['events']:,} events in {report.seconds:.2f}s",
        f"  in store:  {steps:,} step rows, {metrics:,} metric points, {events:,} events"
        + (
            " (a step written twice, or logged again after a resume, is stored once)"
            if new["steps"] > steps
            else ""
        ),
        f"  skipped:   {count(report.skipped, 'line or file', 'lines or files')}",
        f"  cache:     {store.cache.dir}",
    ]
    return "\n".join(lines)


def cmd_query(args: argparse.Namespace) -> int:
    fmt = args.format or ("table" if sys.stdout.isatty() and not args.output else "csv")
    if fmt == "parquet" and not args.output:
        raise UsageError("--format parquet needs --output FILE")
    from tunescope.ingest.store import check_read_only

    check_read_only(args.sql)  # refuse writes before spending time on ingest
    store = open_store(args.runs, args.cache_dir)
    table = store.query(args.sql)
    write_table(table, fmt, args.output)
    if args.output:
        rows, cols = count(table.num_rows, "row"), count(table.num_columns, "column")
        warn(f"wrote {args.output}: {rows} x {cols} ({fmt})")
    return ExitCode.OK


def write_table(table: pa.Table, fmt: str, output: str | None) -> None:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            pq.write_table(table, output)
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"{output}: cannot write: {e}") from None
        return
    if fmt == "csv":
        text = _csv(table)
    elif fmt == "json":
        text = json.dumps(_records(table), indent=1, default=str) + "\n"
    else:
        text = format_table(table)
    if output:
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as e:
            raise InputError(f"{output}: cannot write: {e.strerror or e}") from None
    else:
        sys.stdout.write(text)


def _records(table: pa.Table) -> list[dict[str, Any]]:
    from tunescope.findings import jsonable

    return [jsonable(row) for row in table.to_pylist()]


def _cell(value: Any, exact: bool = False) -> str:
    """A value as text: full precision for files (``exact``), short on a terminal."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return repr(value) if exact else f"{value:.6g}"
    return str(value)


def _csv(table: pa.Table) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.column_names)
    for row in table.to_pylist():
        w.writerow([_cell(v, exact=True) for v in row.values()])
    return buf.getvalue()


def format_table(table: pa.Table, max_width: int = 40) -> str:
    """A plain text table for a terminal."""
    names = table.column_names
    if not names:
        return "(no result)\n"
    rows = [[_cell(v) for v in row.values()] for row in table.to_pylist()]
    rows = [[c if len(c) <= max_width else c[: max_width - 1] + "…" for c in r] for r in rows]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    import pyarrow.types as pt

    numeric = [
        pt.is_integer(f.type) or pt.is_floating(f.type) or pt.is_decimal(f.type)
        for f in table.schema
    ]

    def line(cells: list[str]) -> str:
        out = []
        for c, w, num in zip(cells, widths, numeric, strict=True):
            out.append(c.rjust(w) if num else c.ljust(w))
        return "  ".join(out).rstrip()

    parts = [line(names), "  ".join("─" * w for w in widths)]
    parts += [line(r) for r in rows]
    parts.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(parts) + "\n"


def cmd_export(args: argparse.Namespace) -> int:
    store = open_store(args.runs, args.cache_dir)
    store.export(args.duckdb, overwrite=args.force)
    n = store.cursor().execute("SELECT count(*) FROM runs").fetchone()[0]
    print(f"wrote {args.duckdb}: {count(n, 'run')}; tables runs, steps, metrics, events, findings")
    return ExitCode.OK


def cmd_schema(args: argparse.Namespace) -> int:
    from tunescope import schema

    if args.json:
        print(json.dumps(schema.json_schema(), indent=2))
        return ExitCode.OK
    print(
        f"tunescope event schema v{schema.SCHEMA_VERSION}: one JSON object per line, "
        "RUN/events/rank-N.jsonl"
    )
    sections = [
        ("every event", schema.ENVELOPE),
        ("step: canonical metrics", schema.METRICS + schema.STEP_EXTRAS),
        ("run_start", schema.RUN_START_FIELDS),
        ("resume", schema.RESUME_FIELDS),
        ("checkpoint", schema.CHECKPOINT_FIELDS),
        ("run_end", schema.RUN_END_FIELDS),
        ("intervention (the guard)", schema.INTERVENTION_FIELDS),
    ]
    for title, fields in sections:
        print(f"\n{title}:")
        for f in fields:
            unit = f" [{f.unit}]" if f.unit else ""
            print(f"  {f.name:<26} {f.type:<8} {f.doc}{unit}")
    print("\nAny other numeric field is kept as an extra metric (the metrics view).")
    return ExitCode.OK


def cmd_analyze(args: argparse.Namespace) -> int:
    from tunescope.config import load_config
    from tunescope.detectors.engine import (
        analyze_views,
        fails,
        finding_rows,
        run_summaries,
        select_detectors,
        validate_config,
    )
    from tunescope.detectors.report import render
    from tunescope.errors import InputError

    roots = [Path(r) for r in args.runs]
    for root in roots:
        if not root.is_dir():
            what = "not a directory" if root.exists() else "no such directory"
            raise InputError(f"{root}: {what}; pass the folder that holds your runs")
    cfg = load_config(args.config, starts=roots)
    validate_config(cfg)  # bad tables and options fail before any ingest
    select_detectors(args.select, args.ignore, cfg)
    fail_on = args.fail_on or cfg.fail_on or "error"
    findings: list[Any] = []
    runs: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}  # markdown: loss curves of runs with errors
    collected: dict[str, Any] = {}  # html: what the page draws
    for i, root in enumerate(roots):
        cache = args.cache_dir
        if cache and len(roots) > 1:
            cache = str(Path(cache) / f"{i}-{root.resolve().name}")
        store = open_store(root, cache)
        ids = store.run_ids()
        if not ids:
            if len(roots) > 1:
                warn(f"{root}: no runs found")
            continue
        # the store keeps the full analysis; --select/--ignore filter the report only
        with Progress("analyze", "runs") as bar:
            found, full = analyze_views(
                store, select=args.select, ignore=args.ignore, config=cfg, progress=bar.update
            )
        store.save_findings(finding_rows(full), ids)
        summaries = run_summaries(store, found, groups=cfg.groups)
        if args.format == "markdown":
            from tunescope.detectors.report import markdown_curves

            curves.update(markdown_curves(store, found))
        elif args.format == "html":
            from tunescope.detectors.html_report import collect

            collected.update(collect(store, found, summaries))
        runs.extend(summaries)
        findings.extend(found)
        store.close()
    if not runs:
        raise InputError(
            f"no runs found under {', '.join(map(str, roots))} "
            "(`tunescope ingest` lists what was read and skipped)"
        )
    text = render(
        args.format,
        findings,
        runs,
        curves=curves,
        collected=collected,
        link=getattr(args, "report_link", None),
    )
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as e:
            raise InputError(f"{args.output}: cannot write: {e.strerror or e}") from None
        size = Path(args.output).stat().st_size
        hint = "; open it in a browser, no server needed" if args.format == "html" else ""
        warn(
            f"wrote {args.output}: {count(len(runs), 'run')}, "
            f"{count(len(findings), 'finding')} ({args.format}, {size / 1e6:.2f} MB){hint}"
        )
    else:
        sys.stdout.write(text)
    if args.exit_zero:
        return ExitCode.OK
    return ExitCode.FINDINGS if fails(findings, fail_on) else ExitCode.OK


def cmd_report(args: argparse.Namespace) -> int:
    """``tunescope report``: ``analyze --format html -o FILE --exit-zero``."""
    args = argparse.Namespace(
        **vars(args), format="html", fail_on="never", exit_zero=True, report_link=None
    )
    cmd_analyze(args)  # says what it wrote
    return ExitCode.OK


def cmd_explain(args: argparse.Namespace) -> int:
    from tunescope.detectors.engine import all_detectors, get_detector
    from tunescope.detectors.explain import explain_text, listing

    if not args.detector:
        print(listing(all_detectors()), end="")
        print("\n`tunescope explain TSxxx` prints one detector's documentation and options.")
        return ExitCode.OK
    print(explain_text(get_detector(args.detector)), end="")
    return ExitCode.OK


def cmd_tui(args: argparse.Namespace) -> int:
    if args.interval <= 0:
        raise UsageError(f"--interval must be positive, got {args.interval}")
    from tunescope.config import load_config

    cfg = load_config(None, starts=[Path(args.runs)])  # the same thresholds as analyze
    store = open_store(args.runs, args.cache_dir)
    from tunescope.tui.app import TunescopeApp

    TunescopeApp(
        store,
        live=not args.no_live,
        interval=args.interval,
        analyze=not args.no_analyze,
        detector_config=cfg,
    ).run()
    return ExitCode.OK


def cmd_train(args: argparse.Namespace) -> int:
    from tunescope.errors import ConfigError
    from tunescope.train.trainer import guard_sets, load_config, train

    try:
        cfg = load_config(args.config, guard_sets(args), args.inject or [])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise UsageError(
            f"tunescope train needs the [train] extra ({e.name} is missing): "
            "pip install -e '.[train]' in a clone of tunescope (or make setup-dev)"
        ) from None
    if args.nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc == 1:
        return train(cfg)

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc_per_node={args.nproc}", "-m", "tunescope.train", args.config]
    for item in args.set or []:
        cmd += ["--set", item]
    for item in args.inject or []:
        cmd += ["--inject", item]
    if args.guard:
        cmd += ["--guard", args.guard]
    return _run_ranks(cmd)


def _run_ranks(cmd: list[str]) -> int:
    """Run torchrun in its own session, so that Ctrl-C reaches only this
    process: the ranks are then asked to stop (they end their logs with
    run_end "interrupted" and exit quietly) and one line says so, instead of
    every rank's traceback and torchrun's warnings."""
    import signal
    import subprocess

    import psutil

    env = {**os.environ, "TUNESCOPE_LAUNCHER": "1"}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(proc.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        error("interrupted: every rank stopped and ended its log as interrupted")
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
